//go:build k8s136

package main

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// The container-manager methods as 1.36 declares them (no logger argument yet).

func (m *draContainerManager) GetDynamicResources(pod *v1.Pod, container *v1.Container) []*podresourcesapi.DynamicResource {
	return m.dynamicResources(klog.TODO(), pod, container)
}

func (m *draContainerManager) UpdateAllocatedResourcesStatus(pod *v1.Pod, status *v1.PodStatus) {
	m.ContainerManager.UpdateAllocatedResourcesStatus(pod, status)
	if healthStatusEnabled() {
		m.dra.UpdateAllocatedResourcesStatus(pod, status)
	}
}
