package agent

import (
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
)

// Flow is one tracked connection as the API shows it.
type Flow struct {
	Proto   string `json:"proto"`
	Client  string `json:"client"`  // original source
	Service string `json:"service"` // original destination (the frontend)
	Backend string `json:"backend"` // where it goes
	SNAT    string `json:"snat,omitempty"`
	State   string `json:"state,omitempty"` // TCP only
	Replied bool   `json:"replied"`
	Assured bool   `json:"assured"`
	// ExpiresIn is the seconds left before the flow expires unless a
	// packet refreshes it.
	ExpiresIn float64 `json:"expiresIn"`
}

// ConntrackList is the answer of GET /v1/conntrack.
type ConntrackList struct {
	Flows []Flow `json:"flows"`
	// ByState counts the listed flows by TCP state, "UDP" and "ICMP".
	ByState map[string]int `json:"byState"`
	// Truncated is set when more flows matched than limit.
	Truncated bool `json:"truncated"`
}

// Conntrack lists the tracked flows that match: frontend address (vip),
// a pod's address on either side (pod), protocol ("tcp", "udp"), up to
// limit flows (counts cover every match).
func (a *Agent) Conntrack(vip, pod netip.Addr, proto uint8, limit int) ConntrackList {
	out := ConntrackList{Flows: []Flow{}, ByState: map[string]int{}}
	now := conntrack.Time(time.Since(a.epoch))
	a.ct.Range(func(c conntrack.Conn) bool {
		if c.Expires <= now {
			return true
		}
		if vip.IsValid() && c.Orig.DstIP != vip.As4() {
			return true
		}
		if pod.IsValid() && c.Orig.SrcIP != pod.As4() && c.Reply.SrcIP != pod.As4() {
			return true
		}
		if proto != 0 && c.Orig.Proto != proto {
			return true
		}
		state := c.State.String()
		switch c.Orig.Proto {
		case lb.UDP:
			state = "UDP"
		case conntrack.ProtoICMP:
			state = "ICMP"
		}
		out.ByState[state]++
		if len(out.Flows) >= limit {
			out.Truncated = true
			return true
		}
		f := Flow{
			Proto:     lb.ProtoName(c.Orig.Proto),
			Client:    addrPort(c.Orig.SrcIP, c.Orig.SrcPort),
			Service:   addrPort(c.Orig.DstIP, c.Orig.DstPort),
			Backend:   addrPort(c.Reply.SrcIP, c.Reply.SrcPort),
			Replied:   c.Replied,
			Assured:   c.Assured,
			ExpiresIn: time.Duration(c.Expires - now).Seconds(),
		}
		if c.Orig.Proto == lb.TCP {
			f.State = c.State.String()
		}
		if c.Reply.DstIP != c.Orig.SrcIP || c.Reply.DstPort != c.Orig.SrcPort {
			f.SNAT = addrPort(c.Reply.DstIP, c.Reply.DstPort)
		}
		out.Flows = append(out.Flows, f)
		return true
	})
	return out
}

func addrPort(ip [4]byte, port uint16) string {
	return netip.AddrPortFrom(netip.AddrFrom4(ip), port).String()
}

func (a *Agent) handleConntrack(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var vip, pod netip.Addr
	var err error
	if v := q.Get("vip"); v != "" {
		if vip, err = netip.ParseAddr(v); err != nil {
			http.Error(w, "vip: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	if v := q.Get("pod"); v != "" {
		if pod, err = netip.ParseAddr(v); err != nil {
			http.Error(w, "pod: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	var proto uint8
	switch q.Get("proto") {
	case "":
	case "tcp":
		proto = lb.TCP
	case "udp":
		proto = lb.UDP
	default:
		http.Error(w, "proto: want tcp or udp", http.StatusBadRequest)
		return
	}
	limit := 1000
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 {
			http.Error(w, "limit: want a number", http.StatusBadRequest)
			return
		}
	}
	writeJSON(w, a.Conntrack(vip, pod, proto, limit))
}
