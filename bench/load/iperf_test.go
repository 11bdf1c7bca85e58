package load

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The fixtures are iperf 3.12's -J output over a veth pair:
//
//	iperf3-tcp.json      iperf3 -c … -t 1 -J
//	iperf3-udp.json      iperf3 -c … -t 1 -J -u -b 3G -l 1400 (with losses)
//	iperf3-refused.json  iperf3 -c … -J with no server listening
func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseIperfTCP(t *testing.T) {
	got, err := parseIperf(readFixture(t, "iperf3-tcp.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := IperfResult{
		Protocol: "TCP", Streams: 1, Seconds: 1.002016,
		SentBytes: 1166147584, SentBitsPerSecond: 9321015462.45489,
		ReceivedBytes: 1166147584, ReceivedBitsPerSecond: 9310410883.6585445,
		Retransmits: 1243,
	}
	if got != want {
		t.Errorf("parse =\n %+v, want\n %+v", got, want)
	}
	if g := got.Gbps(); g < 9.31 || g > 9.32 {
		t.Errorf("Gbps = %v, want 9.31", g)
	}
}

func TestParseIperfUDP(t *testing.T) {
	got, err := parseIperf(readFixture(t, "iperf3-udp.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := IperfResult{
		Protocol: "UDP", Streams: 1, Seconds: 1.000113,
		SentBytes: 335613600, SentBitsPerSecond: 2684873896.6393437,
		ReceivedBytes: 328155800, ReceivedBitsPerSecond: 2624949780.6747837,
		Packets: 239724, LostPackets: 5327, LostPercent: 2.22213879294522,
		Jitter: 4104 * time.Nanosecond,
	}
	if got != want {
		t.Errorf("parse =\n %+v, want\n %+v", got, want)
	}
}

// TestParseIperfOldUDP reads the UDP summary of iperf3 versions that have
// only "sum".
func TestParseIperfOldUDP(t *testing.T) {
	data := `{"start":{"test_start":{"protocol":"UDP","num_streams":2}},
		"end":{"sum":{"seconds":3,"bytes":3000,"bits_per_second":8000,"jitter_ms":0.5,"lost_packets":1,"packets":10,"lost_percent":10}}}`
	got, err := parseIperf([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := IperfResult{Protocol: "UDP", Streams: 2, Seconds: 3, SentBytes: 3000, SentBitsPerSecond: 8000,
		ReceivedBytes: 3000, ReceivedBitsPerSecond: 8000, Packets: 10, LostPackets: 1, LostPercent: 10, Jitter: 500 * time.Microsecond}
	if got != want {
		t.Errorf("parse =\n %+v, want\n %+v", got, want)
	}
}

func TestParseIperfErrors(t *testing.T) {
	_, err := parseIperf(readFixture(t, "iperf3-refused.json"))
	if !errors.Is(err, ErrIperf) || !strings.Contains(err.Error(), "unable to connect to server: Connection refused") {
		t.Errorf("refused run: err = %v, want ErrIperf with iperf3's message", err)
	}
	for _, bad := range []string{"", "iperf3: parameter error", `{"start":{},"end":{}}`} {
		if _, err := parseIperf([]byte(bad)); err == nil || errors.Is(err, ErrIperf) {
			t.Errorf("parse %q: err = %v, want a parse error", bad, err)
		}
	}
}

func TestIperfMissingBinary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Iperf(ctx, IperfOptions{Binary: "tlld-no-such-iperf3", Server: netip.MustParseAddr("192.0.2.1")})
	if !errors.Is(err, ErrIperfMissing) || !strings.Contains(err.Error(), "apt-get install iperf3") {
		t.Errorf("err = %v, want ErrIperfMissing saying how to install iperf3", err)
	}
}
