package main

import (
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/embed"
)

// newEtcdCommand runs a single etcd member (the version Kubernetes pins) for one test cluster. fsync is
// off: the data directory lives as long as the cluster and a lost write only matters across a crash of the
// machine, which ends the test run anyway.
func newEtcdCommand() *cobra.Command {
	var dataDir, clientURL, peerURL string
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "a single-member etcd for a test cluster",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := embed.NewConfig()
			cfg.Name = "realk8s"
			cfg.Dir = dataDir
			cfg.UnsafeNoFsync = true
			cfg.LogLevel = "warn"
			cu, err := url.Parse(clientURL)
			if err != nil {
				return fmt.Errorf("--listen-client-url: %w", err)
			}
			pu, err := url.Parse(peerURL)
			if err != nil {
				return fmt.Errorf("--listen-peer-url: %w", err)
			}
			cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
			cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
			cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
			server, err := embed.StartEtcd(cfg)
			if err != nil {
				return fmt.Errorf("start etcd in %s: %w", dataDir, err)
			}
			defer server.Close()
			stop := make(chan os.Signal, 1)
			signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
			select {
			case <-server.Server.ReadyNotify():
				// The harness waits for this line before starting the API server.
				fmt.Fprintf(os.Stderr, "etcd ready clientURL=%s\n", clientURL)
			case <-time.After(60 * time.Second):
				return fmt.Errorf("etcd in %s was not ready after 60s", dataDir)
			case err := <-server.Err():
				return err
			}
			select {
			case <-stop:
				return nil
			case err := <-server.Err():
				return err
			}
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&dataDir, "data-dir", "", "data directory (created if missing)")
	fs.StringVar(&clientURL, "listen-client-url", "http://127.0.0.1:2379", "client URL to listen on and advertise")
	fs.StringVar(&peerURL, "listen-peer-url", "http://127.0.0.1:2380", "peer URL to listen on and advertise")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}
