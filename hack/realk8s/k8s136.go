//go:build k8s136

package main

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	v1 "k8s.io/api/core/v1"
	internalapi "k8s.io/cri-api/pkg/apis"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// What 1.36 declares differently from 1.37 (k8s137.go): container-manager methods without a logger, and
// the CRI client's plain constructor.

func newRuntimeService(ctx context.Context, endpoint string) (internalapi.RuntimeService, error) {
	return remote.NewRemoteRuntimeService(ctx, endpoint, 15*time.Second, noop.NewTracerProvider(), false)
}

func (m *draContainerManager) GetDynamicResources(pod *v1.Pod, container *v1.Container) []*podresourcesapi.DynamicResource {
	return m.dynamicResources(klog.TODO(), pod, container)
}

func (m *draContainerManager) UpdateAllocatedResourcesStatus(pod *v1.Pod, status *v1.PodStatus) {
	m.ContainerManager.UpdateAllocatedResourcesStatus(pod, status)
	if healthStatusEnabled() {
		m.dra.UpdateAllocatedResourcesStatus(pod, status)
	}
}
