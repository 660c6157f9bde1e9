//go:build !k8s136

package main

import (
	"context"
	"time"

	v1 "k8s.io/api/core/v1"
	internalapi "k8s.io/cri-api/pkg/apis"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// What 1.37 declares differently from 1.36 (k8s136.go): two container-manager methods gained a logger, and
// the CRI client is built with a builder.

func newRuntimeService(ctx context.Context, endpoint string) (internalapi.RuntimeService, error) {
	return remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(endpoint).
		WithConnectionTimeout(15 * time.Second).Build(ctx)
}

func (m *draContainerManager) GetDynamicResources(logger klog.Logger, pod *v1.Pod, container *v1.Container) []*podresourcesapi.DynamicResource {
	return m.dynamicResources(logger, pod, container)
}

func (m *draContainerManager) UpdateAllocatedResourcesStatus(logger klog.Logger, pod *v1.Pod, status *v1.PodStatus) {
	m.ContainerManager.UpdateAllocatedResourcesStatus(logger, pod, status)
	if healthStatusEnabled() {
		m.dra.UpdateAllocatedResourcesStatus(logger, pod, status)
	}
}
