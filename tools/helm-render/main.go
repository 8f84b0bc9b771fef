// helm-render: a TEST-ONLY stand-in for `helm template`, for machines without a helm binary.
//
// It renders a chart with Helm's template engine semantics: Go text/template plus sprig (the
// same function library Helm uses, from Debian's golang-github-masterminds-sprig-dev), Helm's
// own functions (include, tpl, required, toYaml, fromYaml, toJson, fromJson, lookup), the
// built-in objects (.Values, .Release, .Chart, .Capabilities, .Template, .Files), values merged
// the way Helm coalesces them (chart values.yaml, then each -f file in order, then --set; a null
// deletes a key), named templates from _*.tpl files, and missing keys rendering as empty.
//
// What it does not do, and `helm template` does: render dependencies that are not vendored as
// directories under charts/ (the official NATS chart is declared in Chart.yaml but cannot be
// downloaded here: only the values we pass it are checked, with --dump-values), validate against
// values.schema.json (the tests do that with ajv), hooks, and --set's full syntax (lists, escapes).
//
// Build (GOPATH mode, Debian's Go packages):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o .cache/bin/helm-render ./tools/helm-render
//
// Usage:
//
//	helm-render [-f values.yaml]... [--set a.b=c]... [--name R] [--namespace N]
//	            [--api-versions group/version[/Kind]]... [--kube-version v1.29.0] [--dump-values] [--notes] CHART_DIR
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/ghodss/yaml"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Files is .Files: the chart's non-template files, read on demand.
type Files struct{ root string }

// Get returns the file's contents, or "" when it does not exist (as Helm does).
func (f Files) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.root, filepath.FromSlash(name)))
	if err != nil {
		return ""
	}
	return string(b)
}

// APIVersions is .Capabilities.APIVersions.
type APIVersions []string

// Has reports whether "group/version" or "group/version/Kind" is available.
func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

type kubeVersion struct {
	Version, Major, Minor, GitVersion string
}

func (k kubeVersion) String() string { return k.Version }

// Helm's default API versions of a cluster (a subset: the built-in groups the chart uses).
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "policy/v1", "rbac.authorization.k8s.io/v1",
	"autoscaling/v2", "storage.k8s.io/v1", "apiextensions.k8s.io/v1",
}

func main() {
	var valueFiles, sets, apiVersions multiFlag
	fs := flag.NewFlagSet("helm-render", flag.ExitOnError)
	fs.Var(&valueFiles, "f", "values file (repeatable, later wins)")
	fs.Var(&valueFiles, "values", "values file (repeatable, later wins)")
	fs.Var(&sets, "set", "a.b.c=value override (repeatable)")
	fs.Var(&apiVersions, "api-versions", "extra API versions for .Capabilities (repeatable, comma-separated)")
	name := fs.String("name", "polytune", "release name")
	namespace := fs.String("namespace", "default", "release namespace")
	kube := fs.String("kube-version", "v1.29.0", "Kubernetes version for .Capabilities")
	dump := fs.Bool("dump-values", false, "print the merged values as JSON instead of rendering")
	notes := fs.Bool("notes", false, "render templates/NOTES.txt (what helm install prints) instead of the manifests")
	args := os.Args[1:]
	// Accept the chart directory before or after the flags.
	var chartDir string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		chartDir, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	if chartDir == "" && fs.NArg() == 1 {
		chartDir = fs.Arg(0)
	}
	if chartDir == "" {
		fmt.Fprintln(os.Stderr, "usage: helm-render [-f values.yaml]... [--set a=b]... [--api-versions g/v]... [--dump-values] [--notes] CHART_DIR")
		os.Exit(2)
	}
	var extra []string
	for _, a := range apiVersions {
		for _, v := range strings.Split(a, ",") {
			if v = strings.TrimSpace(v); v != "" {
				extra = append(extra, v)
			}
		}
	}
	out, err := run(chartDir, valueFiles, sets, *name, *namespace, *kube, extra, *dump, *notes)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

func readYAMLMap(file string) (map[string]interface{}, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	if m == nil {
		m = map[string]interface{}{}
	}
	return m, nil
}

// coalesce merges src over dst the way Helm merges user values over chart defaults: maps merge
// recursively, anything else replaces, and a null in src deletes the key.
func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			dst[k] = coalesce(dm, sm)
		} else {
			dst[k] = v
		}
	}
	return dst
}

// setValue applies one --set a.b.c=value (bools, ints, null; everything else a string).
func setValue(values map[string]interface{}, expr string) error {
	i := strings.Index(expr, "=")
	if i <= 0 {
		return fmt.Errorf("--set %q: want key=value", expr)
	}
	keys := strings.Split(expr[:i], ".")
	raw := expr[i+1:]
	var v interface{} = raw
	switch {
	case raw == "true":
		v = true
	case raw == "false":
		v = false
	case raw == "null":
		v = nil
	default:
		if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
			v = n
		}
	}
	m := values
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[k] = next
		}
		m = next
	}
	last := keys[len(keys)-1]
	if v == nil {
		delete(m, last)
	} else {
		m[last] = v
	}
	return nil
}

func toYAML(v interface{}) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func toJSON(v interface{}) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func run(chartDir string, valueFiles, sets []string, releaseName, namespace, kube string, extraAPIs []string, dump, notes bool) (string, error) {
	chartMeta, err := readYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	chartName, _ := chartMeta["name"].(string)
	if chartName == "" {
		return "", errors.New("Chart.yaml: name is required")
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil && !os.IsNotExist(err) {
		return "", err
	}
	if values == nil {
		values = map[string]interface{}{}
	}
	for _, f := range valueFiles {
		user, err := readYAMLMap(f)
		if err != nil {
			return "", err
		}
		values = coalesce(values, user)
	}
	for _, s := range sets {
		if err := setValue(values, s); err != nil {
			return "", err
		}
	}
	if dump {
		b, err := json.MarshalIndent(values, "", "  ")
		if err != nil {
			return "", err
		}
		return string(b) + "\n", nil
	}
	// Dependencies that are not vendored are reported, not rendered.
	if deps, ok := chartMeta["dependencies"].([]interface{}); ok {
		for _, d := range deps {
			dm, _ := d.(map[string]interface{})
			n, _ := dm["name"].(string)
			if st, err := os.Stat(filepath.Join(chartDir, "charts", n)); err != nil || !st.IsDir() {
				fmt.Fprintf(os.Stderr, "helm-render: dependency %q is not vendored under charts/: not rendered (its values are .Values.%s)\n", n, n)
			}
		}
	}

	// .Chart: Helm exposes Chart.yaml's fields capitalised.
	chart := map[string]interface{}{}
	for k, v := range chartMeta {
		chart[strings.ToUpper(k[:1])+k[1:]] = v
	}
	kv := strings.TrimPrefix(kube, "v")
	parts := strings.SplitN(kv, ".", 3)
	for len(parts) < 2 {
		parts = append(parts, "0")
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart":  chart,
		"Release": map[string]interface{}{
			"Name": releaseName, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"APIVersions": APIVersions(append(append([]string{}, defaultAPIVersions...), extraAPIs...)),
			"KubeVersion": kubeVersion{Version: "v" + kv, Major: parts[0], Minor: parts[1], GitVersion: "v" + kv},
			"HelmVersion": map[string]interface{}{"Version": "v3.14.0-helm-render"},
		},
		"Files": Files{root: chartDir},
	}

	tdir := filepath.Join(chartDir, "templates")
	entries, err := os.ReadDir(tdir)
	if err != nil {
		return "", err
	}
	t := template.New("gotpl")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includeDepth := 0
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["fromJson"] = fromJSON
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} { return map[string]interface{}{} }
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includeDepth > 1000 {
			return "", fmt.Errorf("include %q: recursion too deep", name)
		}
		includeDepth++
		defer func() { includeDepth-- }()
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		c, err := t.Clone()
		if err != nil {
			return "", err
		}
		n, err := c.New("tpl").Option("missingkey=zero").Parse(text)
		if err != nil {
			return "", fmt.Errorf("tpl: %v", err)
		}
		var buf bytes.Buffer
		if err := n.Execute(&buf, data); err != nil {
			return "", fmt.Errorf("tpl: %v", err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	t.Funcs(funcs).Option("missingkey=zero")

	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		fname := e.Name()
		b, err := os.ReadFile(filepath.Join(tdir, fname))
		if err != nil {
			return "", err
		}
		tname := path.Join(chartName, "templates", fname)
		if _, err := t.New(tname).Parse(string(b)); err != nil {
			return "", err
		}
		if !strings.HasPrefix(fname, "_") && (strings.HasSuffix(fname, ".yaml") || strings.HasSuffix(fname, ".yml")) {
			names = append(names, tname)
		}
	}
	sort.Strings(names)
	if notes {
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, path.Join(chartName, "templates", "NOTES.txt"), top); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	var out strings.Builder
	for _, tname := range names {
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{"Name": tname, "BasePath": path.Join(chartName, "templates")}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, tname, data); err != nil {
			return "", err
		}
		rendered := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range splitDocs(rendered) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			out.WriteString("---\n# Source: " + tname + "\n" + strings.TrimLeft(doc, "\n") + "\n")
		}
	}
	return out.String(), nil
}

// splitDocs splits a rendered file at YAML document separators.
func splitDocs(s string) []string {
	var docs []string
	var cur []string
	for _, line := range strings.Split(s, "\n") {
		if strings.TrimRight(line, " \t") == "---" {
			docs = append(docs, strings.Join(cur, "\n"))
			cur = nil
			continue
		}
		cur = append(cur, line)
	}
	docs = append(docs, strings.Join(cur, "\n"))
	for i := range docs {
		docs[i] = strings.TrimRight(docs[i], "\n ")
	}
	return docs
}

func stripComments(doc string) string {
	var keep []string
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}
