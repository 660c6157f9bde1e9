package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/dynamic-resource-allocation/api/metadata"
	metadatav1alpha1 "k8s.io/dynamic-resource-allocation/api/metadata/v1alpha1"
	metadatav1beta1 "k8s.io/dynamic-resource-allocation/api/metadata/v1beta1"
	"k8s.io/dynamic-resource-allocation/devicemetadata"
)

// metadataInput is what `draoracle metadata` reads: device metadata files (their content), each decoded
// the way a consumer does with k8s.io/dynamic-resource-allocation/devicemetadata -- into the newest
// version it knows -- and validated.
type metadataInput struct {
	Files []metadataFile `json:"files"`
}

type metadataFile struct {
	ID      string `json:"id"`
	Content string `json:"content"`
	// Consumer is the version the consumer understands: "v1alpha1" (a 1.36 consumer such as KubeVirt
	// today), "v1beta1" or "internal" (whatever is newest).
	Consumer string `json:"consumer"`
}

// metadataVerdict is one line of output per file: what the consumer decoded (as JSON of its version), the
// version it came from, and the validation error, if any.
type metadataVerdict struct {
	ID         string          `json:"id"`
	Error      string          `json:"error,omitempty"`
	Decoded    json.RawMessage `json:"decoded,omitempty"`
	From       string          `json:"from,omitempty"`
	Validation string          `json:"validation,omitempty"`
}

func runMetadata(in io.Reader, out io.Writer) error {
	var input metadataInput
	if err := decodeStrict(in, &input); err != nil {
		return fmt.Errorf("decode input: %w", err)
	}
	verdicts := make([]metadataVerdict, 0, len(input.Files))
	for _, f := range input.Files {
		verdicts = append(verdicts, decodeMetadataFile(f))
	}
	return encode(out, verdicts)
}

func decodeMetadataFile(f metadataFile) metadataVerdict {
	verdict := metadataVerdict{ID: f.ID}
	var dest runtime.Object
	switch f.Consumer {
	case "v1alpha1":
		dest = &metadatav1alpha1.DeviceMetadata{}
	case "v1beta1":
		dest = &metadatav1beta1.DeviceMetadata{}
	case "internal":
		dest = &metadata.DeviceMetadata{}
	default:
		verdict.Error = fmt.Sprintf("unknown consumer %q", f.Consumer)
		return verdict
	}
	var gvk schema.GroupVersionKind
	var validation error
	decoder := json.NewDecoder(bytes.NewReader([]byte(f.Content)))
	err := devicemetadata.DecodeMetadataFromStream(decoder, dest,
		devicemetadata.DecodeMetadataWithValidationResult(&validation),
		devicemetadata.DecodeMetadataStoreGVKResult(&gvk))
	if err != nil {
		verdict.Error = err.Error()
		return verdict
	}
	if validation != nil {
		verdict.Validation = validation.Error()
	}
	verdict.From = gvk.GroupVersion().String()
	raw, err := json.Marshal(dest)
	if err != nil {
		verdict.Error = err.Error()
		return verdict
	}
	verdict.Decoded = raw
	return verdict
}
