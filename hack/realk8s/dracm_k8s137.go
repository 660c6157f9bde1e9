//go:build !k8s136

package main

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// The container-manager methods whose signatures changed in 1.37 (they gained a logger).

func (m *draContainerManager) GetDynamicResources(logger klog.Logger, pod *v1.Pod, container *v1.Container) []*podresourcesapi.DynamicResource {
	return m.dynamicResources(logger, pod, container)
}

func (m *draContainerManager) UpdateAllocatedResourcesStatus(logger klog.Logger, pod *v1.Pod, status *v1.PodStatus) {
	m.ContainerManager.UpdateAllocatedResourcesStatus(logger, pod, status)
	if healthStatusEnabled() {
		m.dra.UpdateAllocatedResourcesStatus(logger, pod, status)
	}
}
