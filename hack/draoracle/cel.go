package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apiserver/pkg/cel/environment"
	dracel "k8s.io/dynamic-resource-allocation/cel"
)

// celInput is what `draoracle cel` reads: selector cases, each one expression and one device.
type celInput struct {
	Cases []celCase `json:"cases"`
}

type celCase struct {
	ID         string `json:"id"`
	Expression string `json:"expression"`
	// Driver is the driver of the slice the device is in: the domain of unqualified names.
	Driver string `json:"driver"`
	// Device is a resource.k8s.io/v1 Device, decoded by the API types (quantities parsed as upstream).
	Device json.RawMessage `json:"device"`
}

// celVerdict is one line of output per case, in input order.
type celVerdict struct {
	ID string `json:"id"`
	// Verdict is "true", "false", "compile-error" or "runtime-error", as kube-scheduler sees it.
	Verdict string `json:"verdict"`
	Error   string `json:"error,omitempty"`
	// APIValidation is what the API server says about the expression in a new claim: "ok",
	// "invalid: DETAIL" or "too complex: estimated cost N".
	APIValidation string `json:"apiValidation"`
}

// Kubernetes 1.37's default feature gates: consumable capacity is beta (on), list-type attributes alpha.
var features = dracel.Features{EnableConsumableCapacity: true, EnableListTypeAttributes: false}

func runCEL(in io.Reader, out io.Writer) error {
	var input celInput
	if err := decodeStrict(in, &input); err != nil {
		return fmt.Errorf("decode input: %w", err)
	}
	cache := dracel.NewCache(len(input.Cases)+1, features)
	var verdicts []celVerdict
	for _, c := range input.Cases {
		verdict, err := evaluate(cache, c)
		if err != nil {
			return fmt.Errorf("case %s: %w", c.ID, err)
		}
		verdict.APIValidation = validateNew(c.Expression)
		verdicts = append(verdicts, verdict)
	}
	return encode(out, verdicts)
}

// evaluate follows the scheduler: compile through the cache (stored expressions), then DeviceMatches.
func evaluate(cache *dracel.Cache, c celCase) (celVerdict, error) {
	var device resourceapi.Device
	if err := json.Unmarshal(c.Device, &device); err != nil {
		return celVerdict{}, fmt.Errorf("decode device: %w", err)
	}
	compiled := cache.GetOrCompile(c.Expression)
	if compiled.Error != nil {
		return celVerdict{ID: c.ID, Verdict: "compile-error", Error: compiled.Error.Error()}, nil
	}
	matches, _, err := compiled.DeviceMatches(context.Background(), dracel.Device{
		Driver:                   c.Driver,
		AllowMultipleAllocations: device.AllowMultipleAllocations,
		Attributes:               device.Attributes,
		Capacity:                 device.Capacity,
	})
	if err != nil {
		return celVerdict{ID: c.ID, Verdict: "runtime-error", Error: err.Error()}, nil
	}
	return celVerdict{ID: c.ID, Verdict: fmt.Sprint(matches)}, nil
}

// validateNew is the API server's check of a selector in a new object (validation of
// DeviceSelector.CEL.Expression): new-expression environment, estimated cost within the limit.
func validateNew(expression string) string {
	envType := environment.NewExpressions
	result := dracel.GetCompiler(features).CompileCELExpression(expression, dracel.Options{EnvType: &envType})
	if result.Error != nil {
		return "invalid: " + result.Error.Detail
	}
	if result.MaxCost > resourceapi.CELSelectorExpressionMaxCost {
		return fmt.Sprintf("too complex: estimated cost %d", result.MaxCost)
	}
	return "ok"
}
