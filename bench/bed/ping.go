package bed

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// defaultPingTimeout bounds Ping when ctx has no deadline; pingInterval is
// the time between its echo requests.
const (
	defaultPingTimeout = 2 * time.Second
	pingInterval       = 200 * time.Millisecond
)

// ErrNoReply reports an ICMP echo that got no reply in time.
var ErrNoReply = errors.New("no echo reply")

// Ping sends ICMP echo requests from inside netns to dst, one every 200 ms,
// until one is answered or ctx's deadline passes (2 s without one). It
// returns the round trip time of the answered request. It needs no ping
// binary (a raw socket: root).
func Ping(ctx context.Context, netns string, dst netip.Addr) (time.Duration, error) {
	if !dst.Is4() {
		return 0, fmt.Errorf("ping %s: IPv4 only", dst)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultPingTimeout)
	}
	var conn net.PacketConn
	err := InNetns(netns, func() error {
		var err error
		conn, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ping %s from %s: %w", dst, netns, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if err := conn.SetWriteDeadline(deadline); err != nil {
		return 0, err
	}

	id, seq0 := uint16(rand.Uint32()), uint16(rand.Uint32())
	var sent []time.Time // sent[i]: when seq0+i went out
	send := func() error {
		req := make([]byte, 8+16)
		req[0] = 8 // echo request
		binary.BigEndian.PutUint16(req[4:], id)
		binary.BigEndian.PutUint16(req[6:], seq0+uint16(len(sent)))
		copy(req[8:], "trunkline-bed-pi")
		binary.BigEndian.PutUint16(req[2:], icmpChecksum(req))
		sent = append(sent, time.Now())
		_, err := conn.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()})
		return err
	}
	buf := make([]byte, 1500)
	for {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("ping %s from %s: %w after %d requests: %w", dst, netns, ErrNoReply, len(sent), err)
		}
		if err := send(); err != nil && !errors.Is(err, syscall.EHOSTUNREACH) {
			return 0, fmt.Errorf("ping %s from %s: %w", dst, netns, err)
		}
		// Wait for a reply to any request so far until the next one is
		// due: the first may be lost while a neighbour entry resolves.
		next := time.Now().Add(pingInterval)
		if next.After(deadline) {
			next = deadline
		}
		conn.SetReadDeadline(next)
		for {
			n, from, err := conn.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(deadline) && ctx.Err() == nil {
				break // send the next request
			}
			if err != nil {
				if ctx.Err() != nil {
					err = ctx.Err()
				}
				return 0, fmt.Errorf("ping %s from %s: %w after %d requests: %w", dst, netns, ErrNoReply, len(sent), err)
			}
			ip, _ := from.(*net.IPAddr)
			if n < 8 || buf[0] != 0 || ip == nil || !ip.IP.Equal(dst.AsSlice()) || binary.BigEndian.Uint16(buf[4:]) != id {
				continue // someone else's ICMP
			}
			if i := int(binary.BigEndian.Uint16(buf[6:]) - seq0); i < len(sent) {
				return time.Since(sent[i]), nil
			}
		}
	}
}

// icmpChecksum is the Internet checksum of b (whose checksum field is 0).
func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
