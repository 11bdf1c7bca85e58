package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// cmdServeEcho is the tiny server the demo and the tests start in each pod:
// HTTP on --http (answers "hello from NAME"), a UDP echo on --udp and a TCP
// echo on --tcp. It exits after --timeout, so a lost test never leaves it
// running for long.
func cmdServeEcho(ctx context.Context, args []string) error {
	fs := newFlags("serve-echo")
	name := fs.String("name", "", "name to answer with (default: hostname)")
	httpAddr := fs.String("http", ":8080", "HTTP listen address")
	udpAddr := fs.String("udp", ":9000", "UDP echo listen address")
	tcpAddr := fs.String("tcp", ":9001", "TCP echo listen address")
	timeout := fs.Duration("timeout", 10*time.Minute, "exit after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Client", r.RemoteAddr) // who the server saw: SNAT or not
		fmt.Fprintf(w, "hello from %s\n", *name)
	})}
	go srv.Serve(hl)
	defer srv.Close()

	uc, err := net.ListenPacket("udp", *udpAddr)
	if err != nil {
		return err
	}
	defer uc.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			uc.WriteTo(buf[:n], from)
		}
	}()

	tl, err := net.Listen("tcp", *tcpAddr)
	if err != nil {
		return err
	}
	defer tl.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(*timeout))
				io.Copy(c, c)
			}()
		}
	}()
	fmt.Fprintf(os.Stdout, "serving %s: http %s, udp echo %s, tcp echo %s\n", *name, *httpAddr, *udpAddr, *tcpAddr)
	<-ctx.Done()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil
	}
	return nil
}
