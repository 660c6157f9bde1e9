package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	dracel "k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/resourceslice/tracker"
	"k8s.io/dynamic-resource-allocation/structured"
)

// allocInput is what `draoracle alloc` reads: allocation cases, each one node, the cluster's objects and
// the devices already allocated, as kube-scheduler's DRA plugin hands them to the structured allocator.
type allocInput struct {
	Cases []allocCase `json:"cases"`
}

type allocCase struct {
	ID               string                        `json:"id"`
	Node             v1.Node                       `json:"node"`
	Slices           []resourceapi.ResourceSlice   `json:"slices"`
	Classes          []resourceapi.DeviceClass     `json:"classes"`
	Claims           []resourceapi.ResourceClaim   `json:"claims"`
	DeviceTaintRules []resourceapi.DeviceTaintRule `json:"deviceTaintRules"`
	AllocatedState   allocatedState                `json:"allocatedState"`
	// ListTypeAttributes turns on the alpha DRAListTypeAttributes feature for this case (off by default).
	ListTypeAttributes bool `json:"listTypeAttributes,omitempty"`
}

// allocatedState is structured.AllocatedState in JSON: dedicated devices ("driver/pool/device"), shared
// allocations (device and share id) and the capacity they consume per device.
type allocatedState struct {
	Devices  []string                     `json:"devices"`
	Shared   []sharedDevice               `json:"shared"`
	Capacity map[string]map[string]string `json:"capacity"`
}

type sharedDevice struct {
	Device  string `json:"device"`
	ShareID string `json:"shareID"`
}

// allocVerdict is one line of output per case, in input order.
type allocVerdict struct {
	ID string `json:"id"`
	// Verdict is "ok" (allocations found), "unschedulable" (no allocation on this node: a nil result or
	// ErrFailedAllocationOnNode), "timeout" (the scheduler's filter timeout) or "error" (the scheduler
	// aborts the pod's scheduling attempt).
	Verdict     string                         `json:"verdict"`
	Error       string                         `json:"error,omitempty"`
	Allocations []resourceapi.AllocationResult `json:"allocations,omitempty"`
}

// allocFeatures are kube-scheduler 1.37's defaults (dynamicresources.go AllocatorFeatures with the 1.37
// feature gates): admin access, prioritized list, partitionable devices, device taints, binding conditions
// with device status, consumable capacity and fractional capacity ranges on; list-type attributes,
// compatibility groups, derived attributes and optional node operations (alpha) off.
var allocFeatures = structured.Features{
	AdminAccess:             true,
	PrioritizedList:         true,
	PartitionableDevices:    true,
	DeviceTaints:            true,
	DeviceBindingAndStatus:  true,
	ConsumableCapacity:      true,
	FractionalCapacityRange: true,
}

// filterTimeout is the scheduler's default DynamicResources filterTimeout (DRASchedulerFilterTimeout).
const filterTimeout = 10 * time.Second

func runAlloc(in io.Reader, out io.Writer) error {
	var input allocInput
	if err := decodeStrict(in, &input); err != nil {
		return fmt.Errorf("decode input: %w", err)
	}
	cache := dracel.NewCache(1000, features)
	verdicts := make([]allocVerdict, 0, len(input.Cases))
	for _, c := range input.Cases {
		verdict, err := allocate(cache, c)
		if err != nil {
			return fmt.Errorf("case %s: %w", c.ID, err)
		}
		verdicts = append(verdicts, verdict)
	}
	return encode(out, verdicts)
}

// allocate runs one case the way the scheduler's Filter does: DeviceTaintRules applied to the slices by
// the ResourceSlice tracker, a new allocator over all slices, Allocate for the node under the filter
// timeout.
func allocate(cache *dracel.Cache, c allocCase) (allocVerdict, error) {
	slices, err := patchedSlices(c.Slices, c.DeviceTaintRules)
	if err != nil {
		return allocVerdict{}, err
	}
	state, err := c.AllocatedState.toStructured()
	if err != nil {
		return allocVerdict{}, err
	}
	claims := make([]*resourceapi.ResourceClaim, len(c.Claims))
	for i := range c.Claims {
		claims[i] = &c.Claims[i]
	}
	ctx, cancel := context.WithTimeout(context.Background(), filterTimeout)
	defer cancel()
	features := allocFeatures
	features.ListTypeAttributes = c.ListTypeAttributes
	allocator, err := structured.NewAllocator(ctx, features, state, classLister(c.Classes), slices, cache)
	if err != nil {
		return allocVerdict{ID: c.ID, Verdict: "error", Error: err.Error()}, nil
	}
	results, err := allocator.Allocate(ctx, &c.Node, claims)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return allocVerdict{ID: c.ID, Verdict: "timeout", Error: err.Error()}, nil
	case errors.Is(err, structured.ErrFailedAllocationOnNode):
		return allocVerdict{ID: c.ID, Verdict: "unschedulable", Error: err.Error()}, nil
	case err != nil:
		return allocVerdict{ID: c.ID, Verdict: "error", Error: err.Error()}, nil
	case results == nil:
		return allocVerdict{ID: c.ID, Verdict: "unschedulable"}, nil
	}
	return allocVerdict{ID: c.ID, Verdict: "ok", Allocations: results}, nil
}

// patchedSlices is what the scheduler lists: the slices with DeviceTaintRules applied by
// k8s.io/dynamic-resource-allocation/resourceslice/tracker, fed by informers over a fake clientset. The
// result is sorted by name; the allocator does not depend on the order.
func patchedSlices(slices []resourceapi.ResourceSlice, rules []resourceapi.DeviceTaintRule) ([]*resourceapi.ResourceSlice, error) {
	if len(rules) == 0 {
		out := make([]*resourceapi.ResourceSlice, len(slices))
		for i := range slices {
			out[i] = &slices[i]
		}
		return out, nil
	}
	objects := make([]runtime.Object, 0, len(slices)+len(rules))
	for i := range slices {
		objects = append(objects, &slices[i])
	}
	for i := range rules {
		objects = append(objects, &rules[i])
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(objects...)
	factory := informers.NewSharedInformerFactory(client, 0)
	t, err := tracker.StartTracker(ctx, tracker.Options{
		EnableDeviceTaintRules:   true,
		EnableConsumableCapacity: true,
		SliceInformer:            factory.Resource().V1().ResourceSlices(),
		TaintInformer:            factory.Resource().V1().DeviceTaintRules(),
	})
	if err != nil {
		return nil, fmt.Errorf("start ResourceSlice tracker: %w", err)
	}
	defer t.Stop()
	factory.Start(ctx.Done())
	defer func() {
		cancel() // the informers stop only once their context is done
		factory.Shutdown()
	}()
	factory.WaitForCacheSync(ctx.Done())
	for !t.HasSynced() {
		time.Sleep(time.Millisecond)
	}
	patched, err := t.ListPatchedResourceSlices()
	if err != nil {
		return nil, err
	}
	sort.Slice(patched, func(i, j int) bool { return patched[i].Name < patched[j].Name })
	return patched, nil
}

func (s allocatedState) toStructured() (structured.AllocatedState, error) {
	state := structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
	for _, device := range s.Devices {
		id, err := parseDeviceID(device)
		if err != nil {
			return state, err
		}
		state.AllocatedDevices.Insert(id)
	}
	for _, shared := range s.Shared {
		id, err := parseDeviceID(shared.Device)
		if err != nil {
			return state, err
		}
		shareID := types.UID(shared.ShareID)
		state.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, &shareID))
	}
	for device, capacity := range s.Capacity {
		id, err := parseDeviceID(device)
		if err != nil {
			return state, err
		}
		consumed := make(map[resourceapi.QualifiedName]resource.Quantity, len(capacity))
		for name, value := range capacity {
			quantity, err := resource.ParseQuantity(value)
			if err != nil {
				return state, fmt.Errorf("allocated capacity %s of %s: %w", name, device, err)
			}
			consumed[resourceapi.QualifiedName(name)] = quantity
		}
		state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, consumed))
	}
	return state, nil
}

// parseDeviceID splits "driver/pool/device"; a pool name may itself contain slashes.
func parseDeviceID(text string) (structured.DeviceID, error) {
	first, last := strings.Index(text, "/"), strings.LastIndex(text, "/")
	if first < 0 || first == last {
		return structured.DeviceID{}, fmt.Errorf("device id %q: want driver/pool/device", text)
	}
	return structured.MakeDeviceID(text[:first], text[first+1:last], text[last+1:]), nil
}

// classLister serves DeviceClasses by name, with the API server's NotFound error for others.
type classLister []resourceapi.DeviceClass

func (l classLister) List() ([]*resourceapi.DeviceClass, error) {
	out := make([]*resourceapi.DeviceClass, len(l))
	for i := range l {
		out[i] = &l[i]
	}
	return out, nil
}

func (l classLister) Get(name string) (*resourceapi.DeviceClass, error) {
	for i := range l {
		if l[i].Name == name {
			return &l[i], nil
		}
	}
	return nil, apierrors.NewNotFound(resourceapi.Resource("deviceclasses"), name)
}
