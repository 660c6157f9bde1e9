package main

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	clientset "k8s.io/client-go/kubernetes"
	internalapi "k8s.io/cri-api/pkg/apis"
	"k8s.io/klog/v2"
	pluginwatcherapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	kubefeatures "k8s.io/kubernetes/pkg/features"
	"k8s.io/kubernetes/pkg/kubelet/cm"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	"k8s.io/kubernetes/pkg/kubelet/cm/resourceupdates"
	"k8s.io/kubernetes/pkg/kubelet/config"
	kubecontainer "k8s.io/kubernetes/pkg/kubelet/container"
	kubeletmetrics "k8s.io/kubernetes/pkg/kubelet/metrics"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager/cache"
	"k8s.io/kubernetes/pkg/kubelet/status"
)

// draContainerManager is kubemark's stub container manager (no cgroups, no device plugins) with the
// kubelet's real DRA manager wired in the way the real container manager wires it. The stub alone hands
// no registration handler to the plugin watcher and prepares nothing, so a stock hollow kubelet never
// talks to a DRA driver; with this wrapper the kubelet registers DRA plugins, calls
// NodePrepareResources / NodeUnprepareResources, keeps its claim checkpoint, serves claims through the
// PodResources API and follows the plugins' health streams.
type draContainerManager struct {
	cm.ContainerManager
	dra *dra.Manager
}

func newDRAContainerManager(logger klog.Logger, client clientset.Interface, rootDir string) (*draContainerManager, error) {
	manager, err := dra.NewManager(logger, client, rootDir)
	if err != nil {
		return nil, fmt.Errorf("DRA manager in %s: %w", rootDir, err)
	}
	// The kubelet's dra_resource_claims_in_use metric, as the real container manager registers it.
	kubeletmetrics.RegisterCollectors(manager.NewMetricsCollector())
	return &draContainerManager{ContainerManager: cm.NewStubContainerManager(), dra: manager}, nil
}

func (m *draContainerManager) Start(ctx context.Context, node *v1.Node, activePods cm.ActivePodsFunc,
	getNode cm.GetNodeFunc, sourcesReady config.SourcesReady, podStatus status.PodStatusProvider,
	runtime internalapi.RuntimeService, localStorageCapacityIsolation bool) error {
	if err := m.ContainerManager.Start(ctx, node, activePods, getNode, sourcesReady, podStatus, runtime, localStorageCapacityIsolation); err != nil {
		return err
	}
	return m.dra.Start(ctx, dra.ActivePodsFunc(activePods), dra.GetNodeFunc(getNode), sourcesReady)
}

func (m *draContainerManager) GetPluginRegistrationHandlers() map[string]cache.PluginHandler {
	handlers := map[string]cache.PluginHandler{}
	for name, handler := range m.ContainerManager.GetPluginRegistrationHandlers() {
		handlers[name] = handler
	}
	handlers[pluginwatcherapi.DRAPlugin] = m.dra.GetWatcherHandler()
	return handlers
}

func (m *draContainerManager) PrepareDynamicResources(ctx context.Context, pod *v1.Pod) error {
	return m.dra.PrepareResources(ctx, pod)
}

func (m *draContainerManager) UnprepareDynamicResources(ctx context.Context, pod *v1.Pod) error {
	return m.dra.UnprepareResources(ctx, pod)
}

func (m *draContainerManager) PodMightNeedToUnprepareResources(uid types.UID) bool {
	return m.dra.PodMightNeedToUnprepareResources(uid)
}

// GetResources hands the runtime the CDI device ids of the container's claims, as the real container
// manager does; the fake runtime ignores them, but a claim the DRA manager cannot resolve fails the start.
func (m *draContainerManager) GetResources(ctx context.Context, pod *v1.Pod, container *v1.Container) (*kubecontainer.RunContainerOptions, error) {
	opts, err := m.ContainerManager.GetResources(ctx, pod, container)
	if err != nil {
		return nil, err
	}
	info, err := m.dra.GetResources(pod, container)
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).V(4).Info("CDI devices for container", "pod", klog.KObj(pod), "container", container.Name, "cdiDevices", info.CDIDevices)
	opts.CDIDevices = append(opts.CDIDevices, info.CDIDevices...)
	return opts, nil
}

// Updates carries the DRA plugins' device health changes to the kubelet's sync loop.
func (m *draContainerManager) Updates() <-chan resourceupdates.Update {
	if !healthStatusEnabled() {
		return m.ContainerManager.Updates()
	}
	return m.dra.Updates()
}

func healthStatusEnabled() bool {
	return utilfeature.DefaultFeatureGate.Enabled(kubefeatures.ResourceHealthStatus)
}

// dynamicResources is the PodResources view of a container's claims, built exactly as the real container
// manager builds it -- including that a device's CDI list also carries the ids of the devices of the same
// driver listed before it.
func (m *draContainerManager) dynamicResources(logger klog.Logger, pod *v1.Pod, container *v1.Container) []*podresourcesapi.DynamicResource {
	infos, err := m.dra.GetContainerClaimInfos(pod, container)
	if err != nil {
		logger.Error(err, "Unable to get container claim info state", "pod", klog.KObj(pod), "container", container.Name)
		return []*podresourcesapi.DynamicResource{}
	}
	out := []*podresourcesapi.DynamicResource{}
	for _, info := range infos {
		var resources []*podresourcesapi.ClaimResource
		for driverName, driverState := range info.DriverState {
			var cdi []*podresourcesapi.CDIDevice
			for _, device := range driverState.Devices {
				for _, id := range device.CDIDeviceIDs {
					cdi = append(cdi, &podresourcesapi.CDIDevice{Name: id})
				}
				resources = append(resources, &podresourcesapi.ClaimResource{
					CdiDevices: cdi,
					DriverName: driverName,
					PoolName:   device.PoolName,
					DeviceName: device.DeviceName,
					ShareId:    (*string)(device.ShareID),
				})
			}
		}
		out = append(out, &podresourcesapi.DynamicResource{
			ClaimName:      info.ClaimName,
			ClaimNamespace: info.Namespace,
			ClaimResources: resources,
		})
	}
	return out
}
