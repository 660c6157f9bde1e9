// Command realk8s runs the Kubernetes components of the real-cluster test tier from one binary: the
// control plane exactly as upstream builds it, an embedded etcd, a hollow kubelet that runs the kubelet's
// real DRA manager, and two helpers (a certificate authority and a loopback-only egress proxy).
//
//	realk8s kube-apiserver|kube-controller-manager|kube-scheduler [upstream flags]
//	realk8s etcd --data-dir DIR --listen-client-url URL --listen-peer-url URL
//	realk8s hollow-kubelet --name NODE --kubeconfig FILE --root-dir DIR ...
//	realk8s pki --dir DIR --ip IP --node NAME [--node NAME ...]
//	realk8s egress-proxy --socket PATH --dial-ip IP
//	realk8s version
//
// One binary links once and shares its code between the components, which keeps a rebuild short.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata" // CronJob time zones, as upstream's mains embed them

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // the JSON log format, as upstream's mains register it
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric
	"k8s.io/component-base/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"hollow-kubelet":          newHollowKubeletCommand,
	"etcd":                    newEtcdCommand,
	"pki":                     newPKICommand,
	"egress-proxy":            newEgressProxyCommand,
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	name := os.Args[1]
	if name == "version" {
		fmt.Println(version.Get().GitVersion)
		return
	}
	build, ok := components[name]
	if !ok {
		usage()
	}
	command := build()
	command.SetArgs(os.Args[2:])
	os.Exit(cli.Run(command))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: realk8s COMPONENT [flags]; components: version", keys())
	os.Exit(2)
}

func keys() []string {
	out := make([]string, 0, len(components))
	for k := range components {
		out = append(out, k)
	}
	return out
}
