package xdpkernel

// The BPF object is generated and committed, so building the bench needs no
// clang; `make generate` (clang and libbpf-dev) rebuilds it.

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" xdpKernel bpf/xdpkernel.c
