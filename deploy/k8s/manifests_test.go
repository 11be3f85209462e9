// Package k8s_test renders the Kustomize overlays in deploy/k8s the way
// `kubectl apply -k` would and checks that what an operator applies is
// consistent with itself and with the binaries: every object decodes
// strictly into its Kubernetes API type, the flags the manifests set exist,
// ports agree with the flags, selectors select, the JWT key stays in a
// Secret, and the edge's grace period covers its drain.
package k8s_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// pendingFlags are flags the manifests already set that the binaries do
// not define yet (none at the moment: --id-from-hostname, --advertise-ws
// and --advertise-grpc have landed in cmd/edge).
//
// A flag listed here is accepted without a type check. Once a binary
// defines it, the real definition is checked instead (and the test logs
// that the entry can go), so the check tightens by itself. A flag that is
// neither defined nor listed fails the test.
var pendingFlags = map[string][]string{}

// Environment variables a push container may carry that are not flags.
var plainEnv = []string{"POD_NAME", "POD_NAMESPACE", "GOMEMLIMIT"}

// externalSecrets are Secrets an overlay references but does not contain:
// the operator creates them (docs/operations.md).
var externalSecrets = map[string]bool{"push-jwt": true, "push-grpc-tls": true, "push-backend-jwt": true,
	"push-admin": true, "push-etcd-server": true, "push-etcd-client": true}

// Sizing constants measured by bench/ (docs/decisions.md §2,
// bench/README.md); the edge's memory limit must hold PUSH_MAX_CONNS idle
// connections at these costs plus a fixed allowance for the process.
const (
	heapPerConn    = 265      // Go heap+stack per idle connection, upper end of the measured range
	kernelPerConn  = 5100     // kernel memory per TCP socket (Slab + TCP mem)
	processFixed   = 64 << 20 // runtime, gRPC, admin, buffers
	backendLabel   = "push.pushcluster.io/backend"
	pushImageMatch = "push"
)

// overlays are rendered and checked; "all" is prod plus every optional
// component, written in memory so every component is checked too.
var overlays = []string{"overlays/dev", "overlays/prod", "overlays/all"}

func TestOverlays(t *testing.T) {
	help := binaryFlags(t)
	for _, dir := range overlays {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			c := render(t, dir)
			c.checkSecurity(t)
			c.checkProbesAndResources(t)
			c.checkSelectors(t)
			c.checkPushContainers(t, help)
			c.checkNetworkPolicies(t)
			c.checkSecrets(t, dir == "overlays/dev")
			c.checkEtcd(t)
			c.checkMonitoring(t)
			if dir != "overlays/dev" {
				c.checkPinnedImages(t)
			}
		})
	}
}

// TestMetricNames checks that every push_* metric the alerts and the
// Grafana dashboard use is one the daemons register.
func TestMetricNames(t *testing.T) {
	known := registeredMetrics(t)
	files := []string{"components/servicemonitor/prometheusrule.yaml", "../grafana/push-dashboard.json"}
	re := regexp.MustCompile(`\bpush_[a-z_]+`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".json") {
			var d struct {
				UID    string            `json:"uid"`
				Panels []json.RawMessage `json:"panels"`
			}
			if err := json.Unmarshal(b, &d); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if d.UID == "" || len(d.Panels) == 0 {
				t.Errorf("%s: want a uid and panels", f)
			}
		}
		for _, m := range re.FindAllString(string(b), -1) {
			base := m
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				base = strings.TrimSuffix(base, s)
			}
			if !known[base] {
				t.Errorf("%s uses %s, which no daemon registers", f, m)
			}
		}
	}
}

// TestDockerfile checks that the image holds every binary the manifests
// run, where they run it from.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{"CGO_ENABLED=0", "./cmd/...", "/usr/local/bin/", "USER 65532:65532"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	entries, err := os.ReadDir("../../cmd")
	if err != nil {
		t.Fatal(err)
	}
	var bins []string
	for _, e := range entries {
		if e.IsDir() {
			bins = append(bins, e.Name())
		}
	}
	for _, dir := range overlays[:2] {
		c := render(t, dir)
		for _, w := range c.workloads {
			for _, ct := range w.pod.Spec.Containers {
				if !isPushImage(ct.Image) {
					continue
				}
				if len(ct.Command) == 0 || filepath.Dir(ct.Command[0]) != "/usr/local/bin" || !slices.Contains(bins, filepath.Base(ct.Command[0])) {
					t.Errorf("%s %s: command %q is not /usr/local/bin/<a cmd/ binary>", dir, w.name, ct.Command)
				}
			}
		}
	}
}

// ---- rendering ----

// cluster is one rendered overlay, every object decoded into its type.
type cluster struct {
	namespace  string
	workloads  []*workload
	services   []*corev1.Service
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	pdbs       []*policyv1.PodDisruptionBudget
	hpas       []*autoscalingv2.HorizontalPodAutoscaler
	netpols    []*networkingv1.NetworkPolicy
	monitors   []*monitoringv1.ServiceMonitor
	rules      []*monitoringv1.PrometheusRule
	namespaces []*corev1.Namespace
}

// workload is a StatefulSet or Deployment seen through what the checks
// need.
type workload struct {
	kind, name  string
	selector    *metav1.LabelSelector
	pod         *corev1.PodTemplateSpec
	sts         *appsv1.StatefulSet
	replicas    int32
	serviceName string
}

var (
	fsOnce sync.Once
	fsErr  error
	memFS  filesys.FileSystem
)

// tree copies deploy/k8s into memory and adds overlays/all, so the test
// never writes into the repository.
func tree(t *testing.T) filesys.FileSystem {
	t.Helper()
	fsOnce.Do(func() {
		memFS = filesys.MakeFsInMemory()
		fsErr = filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.HasSuffix(p, ".go") {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := memFS.MkdirAll(filepath.Join("/k8s", filepath.Dir(p))); err != nil {
				return err
			}
			return memFS.WriteFile(filepath.Join("/k8s", p), b)
		})
		if fsErr == nil {
			_ = memFS.MkdirAll("/k8s/overlays/all")
			fsErr = memFS.WriteFile("/k8s/overlays/all/kustomization.yaml", []byte(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../prod]
components: [../../components/proxy-protocol, ../../components/unsafe-sysctls]
`))
		}
	})
	if fsErr != nil {
		t.Fatal(fsErr)
	}
	return memFS
}

func render(t *testing.T, dir string) *cluster {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(tree(t), "/k8s/"+dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	c := &cluster{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	for _, r := range rm.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		gvk := r.GetGvk()
		id := fmt.Sprintf("%s %s/%s", dir, gvk.Kind, r.GetName())
		obj := newTyped(gvk.ApiVersion(), gvk.Kind)
		if obj == nil {
			t.Errorf("%s: %s is not a kind this test knows; add its type to newTyped", id, gvk.ApiVersion())
			continue
		}
		strict, err := kjson.UnmarshalStrict(b, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
		if err != nil {
			t.Errorf("%s: %v", id, err)
			continue
		}
		for _, e := range strict {
			t.Errorf("%s: %v", id, e)
		}
		ns := r.GetNamespace()
		if gvk.Kind != "Namespace" {
			if c.namespace == "" {
				c.namespace = ns
			} else if ns != c.namespace {
				t.Errorf("%s: namespace %q, others are in %q", id, ns, c.namespace)
			}
		}
		switch o := obj.(type) {
		case *appsv1.StatefulSet:
			c.workloads = append(c.workloads, &workload{kind: "StatefulSet", name: o.Name, selector: o.Spec.Selector,
				pod: &o.Spec.Template, sts: o, replicas: deref(o.Spec.Replicas, 1), serviceName: o.Spec.ServiceName})
		case *appsv1.Deployment:
			c.workloads = append(c.workloads, &workload{kind: "Deployment", name: o.Name, selector: o.Spec.Selector,
				pod: &o.Spec.Template, replicas: deref(o.Spec.Replicas, 1)})
		case *corev1.Service:
			c.services = append(c.services, o)
		case *corev1.ConfigMap:
			c.configMaps[o.Name] = o
		case *corev1.Secret:
			c.secrets[o.Name] = o
		case *policyv1.PodDisruptionBudget:
			c.pdbs = append(c.pdbs, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			c.hpas = append(c.hpas, o)
		case *networkingv1.NetworkPolicy:
			c.netpols = append(c.netpols, o)
		case *monitoringv1.ServiceMonitor:
			c.monitors = append(c.monitors, o)
		case *monitoringv1.PrometheusRule:
			c.rules = append(c.rules, o)
		case *corev1.Namespace:
			c.namespaces = append(c.namespaces, o)
		}
	}
	if c.namespace == "" || c.namespace == "default" {
		t.Errorf("%s: objects belong in their own namespace, not %q", dir, c.namespace)
	}
	if len(c.namespaces) != 1 || c.namespaces[0].Name != c.namespace {
		t.Errorf("%s: want the Namespace %q among the objects", dir, c.namespace)
	}
	return c
}

func newTyped(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}
	case "v1/Service":
		return &corev1.Service{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "v1/Secret":
		return &corev1.Secret{}
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}
	case "monitoring.coreos.com/v1/PrometheusRule":
		return &monitoringv1.PrometheusRule{}
	}
	return nil
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func (c *cluster) workload(name string) *workload {
	for _, w := range c.workloads {
		if w.name == name {
			return w
		}
	}
	return nil
}

func (c *cluster) service(name string) *corev1.Service {
	for _, s := range c.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// selected returns the workloads whose pods a selector picks.
func (c *cluster) selected(t *testing.T, sel *metav1.LabelSelector) []*workload {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("selector %v: %v", sel, err)
		return nil
	}
	var out []*workload
	for _, w := range c.workloads {
		if s.Matches(labels.Set(w.pod.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

// ---- checks ----

func (c *cluster) checkSecurity(t *testing.T) {
	for _, w := range c.workloads {
		ps := w.pod.Spec
		sc := ps.SecurityContext
		if sc == nil || !deref(sc.RunAsNonRoot, false) || deref(sc.RunAsUser, 0) == 0 {
			t.Errorf("%s: pod must set runAsNonRoot and a non-zero runAsUser", w.name)
		}
		if sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod seccompProfile must be RuntimeDefault", w.name)
		}
		if ps.HostNetwork || ps.HostPID || ps.HostIPC {
			t.Errorf("%s: no host namespaces", w.name)
		}
		if deref(ps.AutomountServiceAccountToken, true) {
			t.Errorf("%s: nothing here talks to the API server; set automountServiceAccountToken: false", w.name)
		}
		for _, ct := range append(slices.Clone(ps.InitContainers), ps.Containers...) {
			cs := ct.SecurityContext
			switch {
			case cs == nil:
				t.Errorf("%s/%s: no securityContext", w.name, ct.Name)
				continue
			case deref(cs.AllowPrivilegeEscalation, true):
				t.Errorf("%s/%s: allowPrivilegeEscalation must be false", w.name, ct.Name)
			case !deref(cs.ReadOnlyRootFilesystem, false):
				t.Errorf("%s/%s: readOnlyRootFilesystem must be true", w.name, ct.Name)
			case deref(cs.Privileged, false):
				t.Errorf("%s/%s: privileged", w.name, ct.Name)
			case cs.Capabilities == nil || !slices.Contains(cs.Capabilities.Drop, "ALL") || len(cs.Capabilities.Add) > 0:
				t.Errorf("%s/%s: capabilities must drop ALL and add none", w.name, ct.Name)
			}
		}
	}
}

func (c *cluster) checkProbesAndResources(t *testing.T) {
	for _, w := range c.workloads {
		for _, ct := range w.pod.Spec.Containers {
			if ct.ReadinessProbe == nil || ct.LivenessProbe == nil {
				t.Errorf("%s/%s: readiness and liveness probes are required", w.name, ct.Name)
			}
			for _, p := range []*corev1.Probe{ct.ReadinessProbe, ct.LivenessProbe} {
				if p != nil && p.HTTPGet != nil && containerPort(ct, p.HTTPGet.Port) == 0 {
					t.Errorf("%s/%s: probe port %s is not a container port", w.name, ct.Name, p.HTTPGet.Port.String())
				}
			}
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, okReq := ct.Resources.Requests[r]
				lim, okLim := ct.Resources.Limits[r]
				if !okReq || !okLim || req.IsZero() || lim.IsZero() {
					t.Errorf("%s/%s: %s request and limit are required", w.name, ct.Name, r)
				} else if lim.Cmp(req) < 0 {
					t.Errorf("%s/%s: %s limit %s below request %s", w.name, ct.Name, r, lim.String(), req.String())
				}
			}
		}
	}
}

func (c *cluster) checkSelectors(t *testing.T) {
	for _, w := range c.workloads {
		s, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || s.Empty() || !s.Matches(labels.Set(w.pod.Labels)) {
			t.Errorf("%s: selector %v does not select its own pod template", w.name, w.selector)
		}
		if w.sts != nil {
			svc := c.service(w.serviceName)
			if svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
				t.Errorf("%s: serviceName %q must name a headless Service", w.name, w.serviceName)
			} else if !slices.Contains(c.selected(t, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}), w) {
				t.Errorf("%s: its governing Service %s does not select its pods", w.name, svc.Name)
			} else if !svc.Spec.PublishNotReadyAddresses {
				t.Errorf("%s: Service %s must publish unready pods: peers and routers reach members by name before they are ready and while they drain", w.name, svc.Name)
			}
		}
	}
	for _, s := range c.services {
		if len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s: no selector", s.Name)
			continue
		}
		ws := c.selected(t, &metav1.LabelSelector{MatchLabels: s.Spec.Selector})
		if len(ws) != 1 {
			t.Errorf("Service %s: selects %d workloads, want 1", s.Name, len(ws))
			continue
		}
		for _, p := range s.Spec.Ports {
			if podPort(ws[0], p.TargetPort) == 0 {
				t.Errorf("Service %s: targetPort %s is not a port of %s", s.Name, p.TargetPort.String(), ws[0].name)
			}
		}
	}
	for _, p := range c.pdbs {
		ws := c.selected(t, p.Spec.Selector)
		if len(ws) != 1 {
			t.Errorf("PodDisruptionBudget %s: selects %d workloads, want 1", p.Name, len(ws))
		}
	}
	for _, name := range []string{"edge", "router", "etcd"} {
		found := false
		for _, p := range c.pdbs {
			if slices.Contains(c.selected(t, p.Spec.Selector), c.workload(name)) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no PodDisruptionBudget", name)
		}
	}
	if len(c.hpas) == 0 {
		t.Error("no HorizontalPodAutoscaler for the routers")
	}
	for _, h := range c.hpas {
		w := c.workload(h.Spec.ScaleTargetRef.Name)
		if w == nil || w.kind != h.Spec.ScaleTargetRef.Kind {
			t.Errorf("HPA %s: target %s/%s not found", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
			continue
		}
		cpu := false
		for _, m := range h.Spec.Metrics {
			cpu = cpu || m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU
		}
		if !cpu {
			t.Errorf("HPA %s: want a CPU utilisation metric", h.Name)
		}
		if w.kind == "Deployment" && w.replicas != 1 {
			t.Errorf("HPA %s: %s sets replicas, which every apply would reset", h.Name, w.name)
		}
		if deref(h.Spec.MinReplicas, 1) > h.Spec.MaxReplicas {
			t.Errorf("HPA %s: minReplicas above maxReplicas", h.Name)
		}
	}
	lb := 0
	for _, s := range c.services {
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			continue
		}
		lb++
		ws := c.selected(t, &metav1.LabelSelector{MatchLabels: s.Spec.Selector})
		if len(ws) != 1 || ws[0].name != "router" {
			t.Errorf("LoadBalancer %s must front the routers", s.Name)
		}
		if s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("LoadBalancer %s: externalTrafficPolicy must be Local", s.Name)
		}
	}
	if lb != 1 {
		t.Errorf("%d LoadBalancer Services, want 1", lb)
	}
}

// flagDef is one flag from a binary's --help.
type flagDef struct{ name, typ, def, env string }

var (
	helpOnce sync.Once
	helpErr  error
	helpDefs map[string]map[string]flagDef // binary → env name → flag
)

// binaryFlags builds the daemons and reads their flags from --help, so
// the check follows the code, not a copy of it.
func binaryFlags(t *testing.T) map[string]map[string]flagDef {
	t.Helper()
	helpOnce.Do(func() {
		dir, err := os.MkdirTemp("", "push-k8s-bins")
		if err != nil {
			helpErr = err
			return
		}
		defer os.RemoveAll(dir)
		bins := []string{"edge", "router"}
		args := []string{"build", "-o", dir + string(os.PathSeparator)}
		for _, b := range bins {
			args = append(args, "./cmd/"+b)
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			helpErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		helpDefs = map[string]map[string]flagDef{}
		for _, b := range bins {
			out, err := exec.Command(filepath.Join(dir, b), "--help").CombinedOutput()
			if err != nil {
				helpErr = fmt.Errorf("%s --help: %v\n%s", b, err, out)
				return
			}
			helpDefs[b] = parseHelp(string(out))
			if len(helpDefs[b]) == 0 {
				helpErr = fmt.Errorf("%s --help: no flags found in\n%s", b, out)
				return
			}
		}
	})
	if helpErr != nil {
		t.Fatal(helpErr)
	}
	return helpDefs
}

// parseHelp reads flagenv's usage layout: "  -name type" then indented
// lines, among them `default: "x"` and "env: PUSH_NAME".
func parseHelp(s string) map[string]flagDef {
	defs := map[string]flagDef{}
	var cur *flagDef
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); strings.HasPrefix(line, "  -") && len(f) > 0 {
			d := flagDef{name: strings.TrimPrefix(f[0], "-"), typ: "bool"}
			if len(f) > 1 {
				d.typ = f[1]
			}
			cur = &d
			continue
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "default: "); ok && cur != nil {
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			cur.def = v
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "env: "); ok && cur != nil {
			cur.env = v
			defs[v] = *cur
			cur = nil
		}
	}
	return defs
}

// envName is flagenv.EnvName("PUSH", flag).
func envName(flag string) string {
	var b strings.Builder
	b.WriteString("PUSH_")
	for _, r := range strings.ToUpper(flag) {
		if r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

func isPushImage(image string) bool {
	name, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	return name == pushImageMatch || strings.HasSuffix(name, "/"+pushImageMatch)
}

// config is a push container's effective flag values.
type config struct {
	bin   string
	vals  map[string]string // flag name → value (set ones)
	plain map[string]string // non-flag environment
	defs  map[string]flagDef
}

// get returns the value the daemon will use: the one set, else the
// binary's default.
func (cf *config) get(t *testing.T, flag string) string {
	t.Helper()
	if v, ok := cf.vals[flag]; ok {
		return v
	}
	if d, ok := cf.defs[envName(flag)]; ok {
		return d.def
	}
	t.Errorf("%s: --%s is neither set nor defined; the checks need its value", cf.bin, flag)
	return ""
}

// pushConfig resolves a push container's configuration the way the
// kubelet and flagenv would: envFrom, then env (with $(VAR) expansion),
// then the command line, which wins.
func (c *cluster) pushConfig(t *testing.T, w *workload, ct corev1.Container, help map[string]map[string]flagDef) *config {
	t.Helper()
	bin := filepath.Base(ct.Command[0])
	defs, ok := help[bin]
	if !ok {
		t.Errorf("%s/%s: runs %s, whose flags this test does not read", w.name, ct.Name, bin)
		return nil
	}
	env := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, ef := range ct.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Errorf("%s/%s: envFrom only from ConfigMaps (Secrets are mounted as files)", w.name, ct.Name)
			continue
		}
		cm := c.configMaps[ef.ConfigMapRef.Name]
		if cm == nil {
			t.Errorf("%s/%s: envFrom ConfigMap %s is not in the overlay", w.name, ct.Name, ef.ConfigMapRef.Name)
			continue
		}
		keys := make([]string, 0, len(cm.Data))
		for k := range cm.Data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			set(ef.Prefix+k, cm.Data[k])
		}
	}
	expand := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	sample := w.name + "-0"
	for _, e := range ct.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, expand.ReplaceAllStringFunc(e.Value, func(m string) string {
				if v, ok := env[m[2:len(m)-1]]; ok {
					return v
				}
				return m
			}))
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			set(e.Name, sample)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			set(e.Name, c.namespace)
		default:
			set(e.Name, "<from "+e.Name+">")
		}
	}
	cf := &config{bin: bin, vals: map[string]string{}, plain: map[string]string{}, defs: defs}
	pending := pendingFlags[bin]
	check := func(flag, val, from string) {
		d, ok := defs[envName(flag)]
		switch {
		case ok:
			if slices.Contains(pending, flag) {
				t.Logf("cmd/%s now defines --%s: remove it from pendingFlags", bin, flag)
			}
			if err := checkType(d.typ, val); err != nil {
				t.Errorf("%s/%s: %s: --%s %q: %v", w.name, ct.Name, from, flag, val, err)
			}
		case slices.Contains(pending, flag):
		default:
			t.Errorf("%s/%s: %s sets --%s, which %s does not define (and it is not in pendingFlags)", w.name, ct.Name, from, flag, bin)
		}
		cf.vals[flag] = val
	}
	flagOf := map[string]string{}
	for _, d := range defs {
		flagOf[d.env] = d.name
	}
	for _, p := range pending {
		flagOf[envName(p)] = p
	}
	for _, k := range order {
		v := env[k]
		if !strings.HasPrefix(k, "PUSH_") {
			if !slices.Contains(plainEnv, k) {
				t.Errorf("%s/%s: environment %s is neither a PUSH_ flag nor expected", w.name, ct.Name, k)
			}
			cf.plain[k] = v
			continue
		}
		if v == "" {
			continue // flagenv ignores empty variables
		}
		name, ok := flagOf[k]
		if !ok {
			t.Errorf("%s/%s: %s names no flag of %s (and no pending one)", w.name, ct.Name, k, bin)
			continue
		}
		check(name, v, "env "+k)
	}
	args := append(slices.Clone(ct.Command[1:]), ct.Args...)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s/%s: positional argument %q", w.name, ct.Name, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasVal {
			if d, ok := defs[envName(name)]; ok && d.typ == "bool" {
				val = "true"
			} else if i+1 < len(args) {
				i++
				val = args[i]
			}
		}
		check(name, val, "argument "+a)
	}
	return cf
}

func checkType(typ, v string) error {
	var err error
	switch typ {
	case "int":
		_, err = strconv.Atoi(v)
	case "uint":
		_, err = strconv.ParseUint(v, 10, 64)
	case "duration":
		_, err = time.ParseDuration(v)
	case "bool":
		_, err = strconv.ParseBool(v)
	}
	return err
}

func (c *cluster) checkPushContainers(t *testing.T, help map[string]map[string]flagDef) {
	cfgs := map[string]*config{}
	var images []string
	for _, w := range c.workloads {
		for _, ct := range w.pod.Spec.Containers {
			if !isPushImage(ct.Image) {
				continue
			}
			images = append(images, ct.Image)
			if len(ct.Command) == 0 {
				t.Errorf("%s/%s: the image holds several binaries; name one in command", w.name, ct.Name)
				continue
			}
			cf := c.pushConfig(t, w, ct, help)
			if cf == nil {
				continue
			}
			cfgs[cf.bin] = cf
			c.checkDaemon(t, w, ct, cf)
		}
	}
	if len(slices.Compact(slices.Sorted(slices.Values(images)))) > 1 {
		t.Errorf("push containers run different images: %v", images)
	}
	edge, router := cfgs["edge"], cfgs["router"]
	if edge == nil || router == nil {
		t.Fatalf("want an edge and a router container, have %v", cfgs)
	}
	if a, b := edge.get(t, "listen-span"), router.get(t, "edge-port-span"); a != b {
		t.Errorf("edge --listen-span %s != router --edge-port-span %s: routers would dial ports edges do not open", a, b)
	}
	if a, b := truthy(edge.get(t, "accept-proxy")), truthy(router.get(t, "send-proxy-v2")); a != b {
		t.Errorf("edge --accept-proxy %v but router --send-proxy-v2 %v: every relayed connection would fail", a, b)
	}
	if edge.vals["ring"] != router.vals["ring"] || !strings.HasPrefix(edge.vals["ring"], "etcd://") {
		t.Errorf("edges (%q) and routers (%q) must follow the same etcd ring", edge.vals["ring"], router.vals["ring"])
	}
}

func truthy(s string) bool { b, _ := strconv.ParseBool(s); return b }

// checkDaemon checks one edge or router container against its flags.
func (c *cluster) checkDaemon(t *testing.T, w *workload, ct corev1.Container, cf *config) {
	t.Helper()
	id := w.name + "/" + ct.Name
	// Each address flag binds every interface and matches its named port.
	addrs := map[string]string{"listen": "ws", "grpc": "grpc", "admin": "admin"}
	ports := map[string]int32{}
	for flag, portName := range addrs {
		host, port, err := net.SplitHostPort(cf.get(t, flag))
		if err != nil {
			t.Errorf("%s: --%s: %v", id, flag, err)
			continue
		}
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			t.Errorf("%s: --%s binds loopback: nothing outside the pod could connect", id, flag)
		}
		n, _ := strconv.Atoi(port)
		ports[flag] = int32(n)
		if got := containerPort(ct, intstr.FromString(portName)); got != int32(n) {
			t.Errorf("%s: --%s port %d, container port %q is %d", id, flag, n, portName, got)
		}
	}
	for _, p := range []*corev1.Probe{ct.ReadinessProbe, ct.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || containerPort(ct, p.HTTPGet.Port) != ports["admin"] {
			t.Errorf("%s: probes must be HTTP on the admin port (%d)", id, ports["admin"])
		}
	}
	if p := ct.ReadinessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "/readyz" {
		t.Errorf("%s: readiness from /readyz, not %s", id, p.HTTPGet.Path)
	}
	if p := ct.LivenessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "/healthz" {
		t.Errorf("%s: liveness from /healthz, not %s", id, p.HTTPGet.Path)
	}
	grace := time.Duration(deref(w.pod.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
	var hook time.Duration
	if ct.Lifecycle == nil || ct.Lifecycle.PreStop == nil {
		t.Errorf("%s: no preStop hook", id)
	} else if s := ct.Lifecycle.PreStop.Sleep; s != nil {
		hook = time.Duration(s.Seconds) * time.Second
	} else if h := ct.Lifecycle.PreStop.HTTPGet; h != nil && containerPort(ct, h.Port) != ports["admin"] {
		t.Errorf("%s: preStop HTTP hook must call the admin port", id)
	}
	drain, _ := time.ParseDuration(cf.get(t, "drain-period"))
	// The daemons give their own shutdown drain + close timeout + 5 s.
	need := hook + drain + 5*time.Second
	if cf.bin == "edge" {
		ctimeout, _ := time.ParseDuration(cf.get(t, "close-timeout"))
		need += ctimeout
	}
	if grace < need {
		t.Errorf("%s: terminationGracePeriodSeconds %v < preStop %v + drain period %v + close timeout and exit (%v in all)", id, grace, hook, drain, need)
	}
	memLimit := ct.Resources.Limits[corev1.ResourceMemory]
	var kernel int64
	switch cf.bin {
	case "edge":
		c.checkEdge(t, w, ct, cf, ports)
		maxConns, _ := strconv.ParseInt(cf.get(t, "max-conns"), 10, 64)
		gogc, _ := strconv.ParseInt(cf.get(t, "gogc"), 10, 64)
		kernel = maxConns * kernelPerConn
		need := kernel + maxConns*heapPerConn*(100+gogc)/100 + processFixed
		if memLimit.Value() < need {
			t.Errorf("%s: memory limit %s < %d connections × (%d B kernel + %d B heap × GOGC headroom) + %d MiB = %d MiB",
				id, memLimit.String(), maxConns, kernelPerConn, heapPerConn, processFixed>>20, need>>20)
		}
	}
	if v, ok := cf.plain["GOMEMLIMIT"]; !ok {
		t.Errorf("%s: set GOMEMLIMIT below the memory limit", id)
	} else if q, err := resource.ParseQuantity(strings.TrimSuffix(v, "B")); err != nil {
		t.Errorf("%s: GOMEMLIMIT %q: %v", id, v, err)
	} else if q.Value() > memLimit.Value()-kernel {
		t.Errorf("%s: GOMEMLIMIT %s > memory limit %s minus %d MiB of socket memory", id, v, memLimit.String(), kernel>>20)
	}
}

func (c *cluster) checkEdge(t *testing.T, w *workload, ct corev1.Container, cf *config, ports map[string]int32) {
	t.Helper()
	if w.sts == nil {
		t.Errorf("%s: edges are a StatefulSet (stable ring id and address per pod)", w.name)
		return
	}
	if !truthy(cf.vals["id-from-hostname"]) {
		t.Errorf("%s: edges take their ring id from the ordinal (--id-from-hostname)", w.name)
	}
	span, _ := strconv.Atoi(cf.get(t, "listen-span"))
	for i := range int32(span) {
		if podPort(w, intstr.FromInt32(ports["listen"]+i)) == 0 {
			t.Errorf("%s: --listen-span %d but port %d is not a container port", w.name, span, ports["listen"]+i)
		}
	}
	// The advertised addresses are the pod's stable DNS name under the
	// governing headless Service, with the bound ports.
	wantHost := fmt.Sprintf("%s-0.%s.%s.svc", w.name, w.serviceName, c.namespace)
	for flag, bound := range map[string]int32{"advertise-ws": ports["listen"], "advertise-grpc": ports["grpc"]} {
		host, port, err := net.SplitHostPort(cf.get(t, flag))
		if err != nil || host != wantHost || port != strconv.Itoa(int(bound)) {
			t.Errorf("%s: --%s %q, want %s:%d", w.name, flag, cf.vals[flag], wantHost, bound)
		}
	}
	if ct.Lifecycle == nil || ct.Lifecycle.PreStop == nil || ct.Lifecycle.PreStop.HTTPGet == nil && ct.Lifecycle.PreStop.Exec == nil {
		t.Errorf("%s: the edge's preStop must drain (HTTP or exec), not just wait", w.name)
	}
}

// containerPort resolves a probe or hook port (name or number) in ct.
func containerPort(ct corev1.Container, p intstr.IntOrString) int32 {
	for _, cp := range ct.Ports {
		if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
			return cp.ContainerPort
		}
	}
	return 0
}

func podPort(w *workload, p intstr.IntOrString) int32 {
	for _, ct := range w.pod.Spec.Containers {
		if n := containerPort(ct, p); n != 0 {
			return n
		}
	}
	return 0
}

// checkNetworkPolicies: ingress is denied by default; browsers reach only
// the routers' ws port; edges' ws ports admit only routers; gRPC ports
// admit only backends, routers and edges; every named port exists.
func (c *cluster) checkNetworkPolicies(t *testing.T) {
	deny := false
	for _, np := range c.netpols {
		if len(np.Spec.PodSelector.MatchLabels) == 0 && len(np.Spec.PodSelector.MatchExpressions) == 0 &&
			slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) && len(np.Spec.Ingress) == 0 {
			deny = true
		}
	}
	if !deny {
		t.Error("no default-deny ingress NetworkPolicy")
	}
	router, edge := c.workload("router"), c.workload("edge")
	isPeer := func(peer networkingv1.NetworkPolicyPeer, w *workload) bool {
		if peer.PodSelector == nil || peer.NamespaceSelector != nil || peer.IPBlock != nil {
			return false
		}
		return slices.Contains(c.selected(t, peer.PodSelector), w)
	}
	isBackend := func(peer networkingv1.NetworkPolicyPeer) bool {
		return peer.IPBlock == nil && peer.PodSelector != nil && peer.PodSelector.MatchLabels[backendLabel] == "true"
	}
	// rules returns the ingress rules that admit port n of w.
	rules := func(w *workload, n int32) (out []networkingv1.NetworkPolicyIngressRule) {
		for _, np := range c.netpols {
			if !slices.Contains(c.selected(t, &np.Spec.PodSelector), w) {
				continue
			}
			for _, r := range np.Spec.Ingress {
				if len(r.Ports) == 0 {
					out = append(out, r)
				}
				for _, p := range r.Ports {
					if p.Port == nil {
						out = append(out, r)
						continue
					}
					lo := podPort(w, *p.Port)
					if lo == 0 {
						t.Errorf("NetworkPolicy %s: port %s is not a port of %s", np.Name, p.Port.String(), w.name)
					}
					if n == lo || p.EndPort != nil && lo <= n && n <= *p.EndPort {
						out = append(out, r)
					}
				}
			}
		}
		return out
	}
	for _, ct := range edge.pod.Spec.Containers {
		for _, cp := range ct.Ports {
			rs := rules(edge, cp.ContainerPort)
			if len(rs) == 0 && cp.Name != "admin" {
				t.Errorf("edge port %s (%d): no NetworkPolicy admits it", cp.Name, cp.ContainerPort)
			}
			for _, r := range rs {
				if len(r.From) == 0 {
					t.Errorf("edge port %s (%d) is open to everyone", cp.Name, cp.ContainerPort)
				}
				for _, peer := range r.From {
					switch {
					case strings.HasPrefix(cp.Name, "ws") && !isPeer(peer, router):
						t.Errorf("edge ws port %d admits %+v, want only routers", cp.ContainerPort, peer)
					case cp.Name == "grpc" && !isPeer(peer, router) && !isPeer(peer, edge) && !isBackend(peer):
						t.Errorf("edge grpc port admits %+v, want only backends, routers and edges", peer)
					}
				}
			}
		}
	}
	for _, ct := range router.pod.Spec.Containers {
		for _, cp := range ct.Ports {
			rs := rules(router, cp.ContainerPort)
			switch cp.Name {
			case "ws":
				if !slices.ContainsFunc(rs, func(r networkingv1.NetworkPolicyIngressRule) bool { return len(r.From) == 0 }) {
					t.Error("router ws port must admit everyone (browsers through the load balancer)")
				}
			case "grpc":
				if len(rs) == 0 {
					t.Error("router grpc port: no NetworkPolicy admits backends")
				}
				for _, r := range rs {
					if len(r.From) == 0 || slices.ContainsFunc(r.From, func(p networkingv1.NetworkPolicyPeer) bool { return !isBackend(p) }) {
						t.Errorf("router grpc port admits %+v, want only backends", r.From)
					}
				}
			}
		}
	}
}

// checkSecrets: the JWT key reaches the edge as a mounted Secret, never
// as a literal in env or a ConfigMap; the prod overlays contain no Secret.
func (c *cluster) checkSecrets(t *testing.T, dev bool) {
	secretish := regexp.MustCompile(`(?i)secret|password|passwd|token|private|(^|_)key$`)
	// Names that match but are not credentials: etcd's cluster token only
	// keeps two clusters from joining by mistake.
	notSecret := []string{"ETCD_INITIAL_CLUSTER_TOKEN"}
	for _, cm := range c.configMaps {
		for k := range cm.Data {
			if secretish.MatchString(k) && !strings.HasSuffix(k, "_FILE") {
				t.Errorf("ConfigMap %s: %s looks like a secret; mount a Secret instead", cm.Name, k)
			}
		}
	}
	if !dev && len(c.secrets) > 0 {
		t.Errorf("the overlay inlines Secrets %v; they are created outside the manifests", slices.Sorted(maps.Keys(c.secrets)))
	}
	for _, w := range c.workloads {
		vols := map[string]corev1.Volume{}
		for _, v := range w.pod.Spec.Volumes {
			vols[v.Name] = v
		}
		for _, ct := range w.pod.Spec.Containers {
			for _, e := range ct.Env {
				if e.ValueFrom == nil && secretish.MatchString(e.Name) && !strings.HasSuffix(e.Name, "_FILE") && !slices.Contains(notSecret, e.Name) {
					t.Errorf("%s/%s: env %s carries a literal secret", w.name, ct.Name, e.Name)
				}
			}
			if !isPushImage(ct.Image) || filepath.Base(ct.Command[0]) != "edge" {
				continue
			}
			path := ""
			for _, e := range ct.Env {
				if e.Name == "PUSH_JWT_SECRET_FILE" {
					// A list: the current secret first (it must be in the
					// Secret), then ones present only during a rotation.
					path, _, _ = strings.Cut(e.Value, ",")
				}
			}
			found := false
			for _, m := range ct.VolumeMounts {
				rel, err := filepath.Rel(m.MountPath, path)
				if path == "" || err != nil || strings.HasPrefix(rel, "..") {
					continue
				}
				v := vols[m.Name]
				if v.Secret == nil {
					continue
				}
				found = true
				if m.SubPath != "" {
					t.Errorf("%s: the JWT Secret is mounted with subPath, which the kubelet never refreshes (key rotation)", w.name)
				}
				s, ok := c.secrets[v.Secret.SecretName]
				switch {
				case ok:
					if _, has := s.Data[rel]; !has {
						if _, has := s.StringData[rel]; !has {
							t.Errorf("%s: Secret %s has no key %q", w.name, s.Name, rel)
						}
					}
				case dev:
					t.Errorf("%s: the dev overlay should generate Secret %s", w.name, v.Secret.SecretName)
				case !externalSecrets[v.Secret.SecretName]:
					t.Errorf("%s: Secret %s is neither in the overlay nor a documented external one", w.name, v.Secret.SecretName)
				}
			}
			if !found {
				t.Errorf("%s: PUSH_JWT_SECRET_FILE %q must point into a mounted Secret", w.name, path)
			}
		}
	}
}

func (c *cluster) checkEtcd(t *testing.T) {
	w := c.workload("etcd")
	if w == nil || w.sts == nil {
		t.Fatal("no etcd StatefulSet")
	}
	if w.replicas != 3 {
		t.Errorf("etcd: %d members, want 3", w.replicas)
	}
	if len(w.sts.Spec.VolumeClaimTemplates) == 0 {
		t.Error("etcd: no persistent volume")
	}
	if w.sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Error("etcd: members must start in parallel to form the first quorum")
	}
	var initial string
	for _, e := range w.pod.Spec.Containers[0].Env {
		if e.Name == "ETCD_INITIAL_CLUSTER" {
			initial = e.Value
		}
	}
	for i := range w.replicas {
		m := fmt.Sprintf("etcd-%d=http://etcd-%d.%s:", i, i, w.serviceName)
		if !strings.Contains(initial, m) {
			t.Errorf("etcd: ETCD_INITIAL_CLUSTER %q lacks %s", initial, m)
		}
	}
	// The ring URL names a Service in front of etcd's client port.
	for _, cm := range c.configMaps {
		u, ok := cm.Data["PUSH_RING"]
		if !ok {
			continue
		}
		host, port, err := net.SplitHostPort(strings.SplitN(strings.TrimPrefix(u, "etcd://"), "/", 2)[0])
		s := c.service(host)
		if err != nil || s == nil || !slices.Contains(c.selected(t, &metav1.LabelSelector{MatchLabels: s.Spec.Selector}), w) ||
			!slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return strconv.Itoa(int(p.Port)) == port }) {
			t.Errorf("ConfigMap %s: PUSH_RING %q does not name the etcd client Service and port", cm.Name, u)
		}
	}
}

func (c *cluster) checkMonitoring(t *testing.T) {
	for _, m := range c.monitors {
		var svcs []*corev1.Service
		sel, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
		if err != nil {
			t.Errorf("ServiceMonitor %s: %v", m.Name, err)
			continue
		}
		for _, s := range c.services {
			if sel.Matches(labels.Set(s.Labels)) {
				svcs = append(svcs, s)
			}
		}
		if len(svcs) == 0 {
			t.Errorf("ServiceMonitor %s selects no Service", m.Name)
		}
		for _, e := range m.Spec.Endpoints {
			for _, s := range svcs {
				if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) {
					t.Errorf("ServiceMonitor %s: Service %s has no port %q", m.Name, s.Name, e.Port)
				}
			}
		}
	}
}

func (c *cluster) checkPinnedImages(t *testing.T) {
	for _, w := range c.workloads {
		for _, ct := range w.pod.Spec.Containers {
			name := ct.Image
			if strings.Contains(name, "@sha256:") {
				continue
			}
			i := strings.LastIndex(name, ":")
			if i < strings.LastIndex(name, "/") || i < 0 || name[i+1:] == "latest" {
				t.Errorf("%s/%s: image %q is not pinned to a tag or digest", w.name, ct.Name, name)
			}
		}
	}
}

// registeredMetrics reads the metric names the daemons register.
func registeredMetrics(t *testing.T) map[string]bool {
	known := map[string]bool{}
	re := regexp.MustCompile(`Name:\s*"(push_[a-z_]+)"`)
	for _, f := range []string{"../../pkg/edge/metrics.go", "../../pkg/router/metrics.go", "../../pkg/grpcauth/limit.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			known[string(m[1])] = true
		}
	}
	if len(known) == 0 {
		t.Fatal("no metrics found in pkg/edge and pkg/router")
	}
	return known
}
