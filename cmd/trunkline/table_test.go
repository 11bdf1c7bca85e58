package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trunkline/trunkline/agent"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		os.WriteFile(path, got, 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from its golden file:\n%s\nwant:\n%s", name, got, want)
	}
}

func sampleStats(scale uint64) agent.Stats {
	c := func(n uint64) agent.Counters {
		return agent.Counters{RxPackets: n * scale, RxBytes: 64 * n * scale, TxPackets: 2 * n * scale, TxBytes: 128 * n * scale, Drops: n / 100 * scale}
	}
	return agent.Stats{
		Interfaces: []agent.InterfaceStats{{Name: "trunk", Queue: 0, Counters: c(1000)}},
		Pods: []agent.PodStats{
			{Name: "pod1", VLAN: 101, IP: "10.100.1.1", HostVeth: "hpod1", Counters: c(400), Kernel: agent.KernelDrops{FillRingEmpty: scale}},
			{Name: "pod2", VLAN: 102, IP: "10.100.1.2", HostVeth: "hpod2", Counters: c(600)},
		},
		Drops:     map[string]uint64{"unknown_vid": 3 * scale, "qinq": 0, "malformed": scale},
		Conntrack: agent.ConntrackStats{Entries: 12, MaxEntries: 1048576, Inserts: 40 * scale, SNATPortsInUse: 2},
		Rejects:   scale,
		UMEM:      []agent.UMEMStats{{Queue: 0, Total: 20480, Free: 17664, Fill: 2816}},
	}
}

func TestStatsTableGolden(t *testing.T) {
	var b bytes.Buffer
	if err := writeStatsTable(&b, sampleStats(1)); err != nil {
		t.Fatal(err)
	}
	golden(t, "stats.txt", b.Bytes())
}

func TestTopGolden(t *testing.T) {
	var b bytes.Buffer
	renderTop(&b, sampleStats(1), sampleStats(3), 2*time.Second, time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	golden(t, "top.txt", b.Bytes())
}

func TestStatusPodsServicesConntrackTablesGolden(t *testing.T) {
	var b bytes.Buffer
	writeStatusTable(&b, agent.Status{Version: "v1.2.3", Trunk: "eth1", NodeIP: "10.100.0.2", XDPMode: "native", Queues: 1,
		Pods: 2, Services: 5, Frontends: 7, DrainingBackends: 1, Ready: true, UptimeSec: 3600})
	golden(t, "status.txt", b.Bytes())
	b.Reset()
	writePodsTable(&b, sampleStats(1).Pods)
	golden(t, "pods.txt", b.Bytes())
	b.Reset()
	writeServicesTable(&b, []agent.ServiceConfig{
		{Name: "default/web", Protocol: "TCP", ClusterIP: "10.96.0.10", Port: 80, TargetPort: 8080, NodePort: 30080,
			Backends: []string{"pod1", "10.100.9.9"}, TerminatingBackends: []string{"pod2"}},
		{Name: "default/dns", Protocol: "UDP", ClusterIP: "10.96.0.53", Port: 53, TargetPort: 53},
	})
	golden(t, "services.txt", b.Bytes())
	b.Reset()
	writeConntrackTable(&b, agent.ConntrackList{
		Flows: []agent.Flow{
			{Proto: "tcp", Client: "10.100.0.1:40000", Service: "10.96.0.10:80", Backend: "10.100.1.1:8080", State: "ESTABLISHED", Replied: true, Assured: true, ExpiresIn: 431999},
			{Proto: "udp", Client: "10.100.1.2:5353", Service: "10.96.0.53:53", Backend: "10.100.1.1:53", SNAT: "10.100.0.2:61001", ExpiresIn: 29},
		},
		ByState: map[string]int{"ESTABLISHED": 1, "UDP": 1},
	}, 1000)
	golden(t, "conntrack.txt", b.Bytes())
}
