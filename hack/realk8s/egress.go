package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// newEgressProxyCommand serves HTTP CONNECT on a unix socket for the API server's "cluster" egress
// selector. A hollow kubelet reports the machine's own address as its InternalIP and cannot report a
// loopback one, so the API server would reach kubelets (logs, exec, port-forward, proxy) over the
// machine's network. This proxy dials the requested port on one loopback address instead, whatever host
// was asked for: every kubelet of a test cluster listens on that address with a port of its own, and no
// connection leaves 127.0.0.0/8.
func newEgressProxyCommand() *cobra.Command {
	var socket, dialIP string
	cmd := &cobra.Command{
		Use:   "egress-proxy",
		Short: "an HTTP CONNECT proxy on a unix socket that dials one loopback address only",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ip := net.ParseIP(dialIP)
			if ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("--dial-ip %q is not a loopback address", dialIP)
			}
			_ = os.Remove(socket)
			listener, err := net.Listen("unix", socket)
			if err != nil {
				return err
			}
			defer listener.Close()
			stop := make(chan os.Signal, 1)
			signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
			go func() { <-stop; listener.Close() }()
			fmt.Fprintf(os.Stderr, "egress proxy ready socket=%s dialIP=%s\n", socket, dialIP)
			for {
				conn, err := listener.Accept()
				if err != nil {
					return nil
				}
				go tunnel(conn, ip)
			}
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&socket, "socket", "", "unix socket to listen on")
	fs.StringVar(&dialIP, "dial-ip", "127.0.0.1", "the loopback address every tunnel goes to")
	_ = cmd.MarkFlagRequired("socket")
	return cmd
}

func tunnel(client net.Conn, ip net.IP) {
	defer client.Close()
	reader := bufio.NewReader(client)
	req, err := http.ReadRequest(reader)
	if err != nil {
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprintf(client, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	_, port, err := net.SplitHostPort(req.Host)
	if err != nil {
		fmt.Fprintf(client, "HTTP/1.1 400 Bad Request\r\n\r\n%s", err)
		return
	}
	target := net.JoinHostPort(ip.String(), port)
	upstream, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		fmt.Fprintf(client, "HTTP/1.1 502 Bad Gateway\r\n\r\n%s", err)
		fmt.Fprintf(os.Stderr, "egress proxy: %s (asked for %s): %v\n", target, req.Host, err)
		return
	}
	defer upstream.Close()
	if _, err := fmt.Fprintf(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(upstream, reader); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, upstream); done <- struct{}{} }()
	<-done
}
