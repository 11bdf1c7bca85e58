package bed

// The BPF objects are generated and committed, so building the bed needs no
// clang; `make generate` (clang and libbpf-dev) rebuilds them.

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" vlanTag bpf/vlan_tag.c
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" trunkCount bpf/trunk_count.c
