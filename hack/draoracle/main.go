// Command draoracle answers questions about Dynamic Resource Allocation with Kubernetes' own code, for the
// differential tests in tests/ (docs/cel.md): the same inputs go to accel-dra and to this program, and
// their verdicts must agree.
//
// Usage: draoracle SUBCOMMAND < cases.json > verdicts.json
//
//	cel   DRA CEL selectors: k8s.io/dynamic-resource-allocation/cel as kube-scheduler uses it (the
//	      stored-expression environment, compiled through the cache, runtime cost limit 1,000,000), and
//	      what API validation says about the expression in a new claim (new-expression environment,
//	      estimated cost).
//	alloc allocation cases: k8s.io/dynamic-resource-allocation/structured as kube-scheduler's DRA plugin
//	      runs it (1.37 default features, DeviceTaintRules applied by the ResourceSlice tracker, the
//	      filter timeout), one node and its claims per case.
//	metadata device metadata files (KEP-5304) decoded as consumers read them:
//	      k8s.io/dynamic-resource-allocation/devicemetadata into a chosen version, validated.
//
// Input and output are JSON documents; each subcommand documents its own shapes.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
)

type subcommand struct {
	summary string
	run     func(in io.Reader, out io.Writer) error
}

var subcommands = map[string]subcommand{
	"cel":      {"evaluate DRA CEL selectors against devices", runCEL},
	"alloc":    {"allocate claims on a node with the structured allocator", runAlloc},
	"metadata": {"decode device metadata files as a consumer does", runMetadata},
}

func main() {
	if len(os.Args) != 2 || subcommands[os.Args[1]].run == nil {
		usage()
		os.Exit(2)
	}
	if err := subcommands[os.Args[1]].run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "draoracle %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: draoracle SUBCOMMAND < input.json > output.json")
	names := make([]string, 0, len(subcommands))
	for name := range subcommands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(os.Stderr, "  %-6s %s\n", name, subcommands[name].summary)
	}
}

// decodeStrict reads one JSON document and refuses fields the input type does not have.
func decodeStrict(in io.Reader, into any) error {
	decoder := json.NewDecoder(in)
	decoder.DisallowUnknownFields()
	return decoder.Decode(into)
}

func encode(out io.Writer, value any) error {
	encoder := json.NewEncoder(out)
	encoder.SetEscapeHTML(false)
	return encoder.Encode(value)
}
