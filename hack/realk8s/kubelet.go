package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/version"
	fakeremote "k8s.io/cri-client/pkg/fake"
	"k8s.io/klog/v2"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
	"k8s.io/kubernetes/cmd/kubelet/app/options"
	kubeletconfig "k8s.io/kubernetes/pkg/kubelet/apis/config"
	cadvisortest "k8s.io/kubernetes/pkg/kubelet/cadvisor/testing"
	"k8s.io/kubernetes/pkg/kubemark"
)

type hollowKubeletOptions struct {
	name, kubeconfig, rootDir, address string
	port, maxPods                      int
	tlsCert, tlsKey, clientCA          string
	labels                             map[string]string
}

// newHollowKubeletCommand runs kubemark's hollow kubelet -- the real kubelet with a fake container runtime
// and fake cAdvisor -- with the real DRA manager, its API served over TLS with the kubelet's own
// authentication and authorization (client certificates, TokenReview and SubjectAccessReview), and
// everything under one root directory: plugins_registry/ for registration sockets, plugins/,
// pod-resources/kubelet.sock, the DRA checkpoint and the fake runtime's socket.
func newHollowKubeletCommand() *cobra.Command {
	opts := hollowKubeletOptions{labels: map[string]string{}}
	cmd := &cobra.Command{
		Use:   "hollow-kubelet",
		Short: "a kubelet without containers that runs the kubelet's real DRA manager",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runHollowKubelet(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&opts.name, "name", "", "node name")
	fs.StringVar(&opts.kubeconfig, "kubeconfig", "", "kubeconfig with the node's client certificate")
	fs.StringVar(&opts.rootDir, "root-dir", "", "the kubelet's root directory")
	fs.StringVar(&opts.address, "address", "127.0.0.1", "address the kubelet API listens on")
	fs.IntVar(&opts.port, "port", 10250, "port of the kubelet API (HTTPS)")
	fs.IntVar(&opts.maxPods, "max-pods", 110, "pods the node accepts")
	fs.StringVar(&opts.tlsCert, "tls-cert-file", "", "serving certificate of the kubelet API")
	fs.StringVar(&opts.tlsKey, "tls-private-key-file", "", "key of the serving certificate")
	fs.StringVar(&opts.clientCA, "client-ca-file", "", "CA that signs the clients of the kubelet API")
	labels := cliflag.ConfigurationMap(opts.labels)
	fs.Var(&labels, "node-labels", "labels to register the node with (key=value,...)")
	utilfeature.DefaultMutableFeatureGate.AddFlag(fs)
	for _, name := range []string{"name", "kubeconfig", "root-dir", "tls-cert-file", "tls-private-key-file", "client-ca-file"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func runHollowKubelet(ctx context.Context, opts hollowKubeletOptions) error {
	logger := klog.FromContext(ctx)
	logger.Info("Starting hollow kubelet", "node", opts.name, "version", version.Get().GitVersion)
	rootDir, err := filepath.Abs(opts.rootDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(rootDir, 0o750); err != nil {
		return err
	}
	restConfig, err := clientcmd.BuildConfigFromFlags("", opts.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", opts.kubeconfig, err)
	}
	restConfig.UserAgent = "hollow-kubelet/" + opts.name
	restConfig.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := clientset.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	flags, config, err := hollowKubeletConfig(opts, rootDir)
	if err != nil {
		return err
	}
	heartbeatConfig := *restConfig
	heartbeatConfig.Timeout = config.NodeStatusUpdateFrequency.Duration
	heartbeatConfig.QPS = -1
	heartbeat, err := clientset.NewForConfig(&heartbeatConfig)
	if err != nil {
		return err
	}

	endpoint := "unix://" + filepath.Join(rootDir, "runtime.sock")
	runtime := fakeremote.NewFakeRemoteRuntime()
	if err := runtime.Start(endpoint); err != nil {
		return fmt.Errorf("fake runtime on %s: %w", endpoint, err)
	}
	defer runtime.Stop()
	runtimeService, err := newRuntimeService(ctx, endpoint)
	if err != nil {
		return fmt.Errorf("runtime service: %w", err)
	}

	containerManager, err := newDRAContainerManager(logger, client, rootDir)
	if err != nil {
		return err
	}
	hollow := kubemark.NewHollowKubelet(flags, config, client, heartbeat,
		&cadvisortest.Fake{NodeName: opts.name}, runtime.ImageService, runtimeService, containerManager)

	// kubemark serves the kubelet API over plain HTTP without authentication; the API server only speaks
	// HTTPS to kubelets, so give the hollow kubelet the real kubelet's TLS and auth set-up.
	tlsOptions, err := kubeletapp.InitializeTLS(ctx, flags, config)
	if err != nil {
		return fmt.Errorf("kubelet TLS: %w", err)
	}
	auth, reloadCA, err := kubeletapp.BuildAuth(types.NodeName(opts.name), client, *config)
	if err != nil {
		return fmt.Errorf("kubelet auth: %w", err)
	}
	reloadCA(ctx.Done())
	hollow.KubeletDeps.TLSOptions = tlsOptions
	hollow.KubeletDeps.Auth = auth

	hollow.Run(ctx)
	return nil
}

// hollowKubeletConfig is the kubelet's default configuration with what a node without cgroups, static
// pods or a cloud needs, and every listener on the loopback address given.
func hollowKubeletConfig(opts hollowKubeletOptions, rootDir string) (*options.KubeletFlags, *kubeletconfig.KubeletConfiguration, error) {
	flags := options.NewKubeletFlags()
	flags.RootDirectory = rootDir
	flags.CertDirectory = filepath.Join(rootDir, "pki")
	flags.HostnameOverride = opts.name
	flags.NodeLabels = opts.labels
	flags.MinimumGCAge = metav1.Duration{Duration: time.Minute}
	flags.MaxContainerCount = 100
	flags.MaxPerPodContainerCount = 2

	config, err := options.NewKubeletConfiguration()
	if err != nil {
		return nil, nil, err
	}
	config.EnableServer = true
	config.Address = opts.address
	config.Port = int32(opts.port)
	config.ReadOnlyPort = 0
	config.HealthzPort = 0 // two kubelets share one machine; nothing probes it
	config.TLSCertFile = opts.tlsCert
	config.TLSPrivateKeyFile = opts.tlsKey
	config.Authentication.X509.ClientCAFile = opts.clientCA
	config.Authentication.Anonymous.Enabled = false
	config.Authentication.Webhook.Enabled = true
	config.Authorization.Mode = kubeletconfig.KubeletAuthorizationModeWebhook
	config.StaticPodPath = ""
	config.StaticPodURL = ""
	config.PodLogsDir = filepath.Join(rootDir, "pod-logs")
	config.MaxPods = int32(opts.maxPods)
	config.ProviderID = "realk8s://" + opts.name
	config.ClusterDNS = []string{}
	config.CgroupsPerQOS = false
	config.CgroupRoot = ""
	config.KubeletCgroups = ""
	config.SystemCgroups = ""
	config.EnableControllerAttachDetach = false
	config.ProtectKernelDefaults = false
	config.FailSwapOn = false
	config.RegisterNode = true
	config.LocalStorageCapacityIsolation = true
	config.SyncFrequency.Duration = 10 * time.Second
	config.NodeStatusUpdateFrequency.Duration = 10 * time.Second
	config.FileCheckFrequency.Duration = 20 * time.Second
	config.HTTPCheckFrequency.Duration = 20 * time.Second
	config.ResolverConfig = ""
	config.MaxOpenFiles = 1024
	return flags, config, nil
}
