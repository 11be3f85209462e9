package faults

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

//go:embed netns-deps.sh
var netnsDeps string

// netns is a network namespace joined to the root namespace by a veth
// pair with a private link-local /30 (169.254.X.0/30, X from the
// harness's pid): rootAddr on the root side, nsAddr inside. Scenario h runs
// one edge inside it and cuts only its traffic to etcd with nftables rules
// inside the namespace, so nothing outside the namespace is touched.
type netns struct {
	name, rootIf, nsIf string
	rootAddr, nsAddr   string
	logf               func(string, ...any)
	unregister         func()
}

const nsPrefix = "pushfault-"

func sh(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// removeStale deletes namespaces (and their veths) left by harnesses that
// died without cleaning up.
func removeStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		pidS, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidS)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		sh("ip", "link", "del", "pfr"+pidS)
		sh("ip", "netns", "del", name)
	}
}

// newNetns makes the namespace, or says why it cannot (then the scenario
// is skipped).
func newNetns(logf func(string, ...any)) (*netns, string) {
	if os.Geteuid() != 0 {
		return nil, "not root: cannot create network namespaces"
	}
	if _, err := exec.LookPath("ip"); err != nil || !haveNft() {
		if err := sh("bash", "-c", netnsDeps); err != nil {
			return nil, "cannot install ip/nft: " + err.Error()
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, "no ip command (iproute2)"
	}
	if !haveNft() {
		return nil, "no nft command (nftables)"
	}
	removeStale()
	pid := strconv.Itoa(os.Getpid())
	x := 20 + os.Getpid()%200
	n := &netns{name: nsPrefix + pid, rootIf: "pfr" + pid, nsIf: "pfn" + pid,
		rootAddr: fmt.Sprintf("169.254.%d.1", x), nsAddr: fmt.Sprintf("169.254.%d.2", x), logf: logf}
	steps := [][]string{
		{"ip", "netns", "add", n.name},
		{"ip", "link", "add", n.rootIf, "type", "veth", "peer", "name", n.nsIf},
		{"ip", "link", "set", n.nsIf, "netns", n.name},
		{"ip", "addr", "add", n.rootAddr + "/30", "dev", n.rootIf},
		{"ip", "link", "set", n.rootIf, "up"},
		{"ip", "netns", "exec", n.name, "ip", "addr", "add", n.nsAddr + "/30", "dev", n.nsIf},
		{"ip", "netns", "exec", n.name, "ip", "link", "set", n.nsIf, "up"},
		{"ip", "netns", "exec", n.name, "ip", "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			n.Close()
			return nil, "network namespace: " + err.Error()
		}
	}
	// nftables must work inside it too.
	if err := sh("ip", "netns", "exec", n.name, "nft", "list", "ruleset"); err != nil {
		n.Close()
		return nil, "nftables in the namespace: " + err.Error()
	}
	n.unregister = open.add(n.Close)
	logf("network namespace %s: %s (root, %s) <-> %s (namespace, %s)", n.name, n.rootAddr, n.rootIf, n.nsAddr, n.nsIf)
	return n, ""
}

func haveNft() bool { _, err := exec.LookPath("nft"); return err == nil }

// cut drops, inside the namespace, every packet between it and etcd's
// client port on the root side.
func (n *netns) cut(etcdPort string) error {
	rules := fmt.Sprintf(`table inet pushfault {
  chain out { type filter hook output priority 0; policy accept; ip daddr %[1]s tcp dport %[2]s drop; }
  chain in { type filter hook input priority 0; policy accept; ip saddr %[1]s tcp sport %[2]s drop; }
}
`, n.rootAddr, etcdPort)
	cmd := exec.Command("ip", "netns", "exec", n.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, out)
	}
	// The cut must hold: a new connection from the namespace to etcd
	// must not get through.
	probe := fmt.Sprintf("exec 3<>/dev/tcp/%s/%s", n.rootAddr, etcdPort)
	if sh("ip", "netns", "exec", n.name, "timeout", "2", "bash", "-c", probe) == nil {
		return fmt.Errorf("partition not effective: the namespace still reaches etcd at %s:%s", n.rootAddr, etcdPort)
	}
	return nil
}

// heal removes the rules.
func (n *netns) heal() error {
	return sh("ip", "netns", "exec", n.name, "nft", "delete", "table", "inet", "pushfault")
}

// Close deletes the namespace and the veth pair.
func (n *netns) Close() {
	if n.unregister != nil {
		n.unregister()
	}
	sh("ip", "link", "del", n.rootIf)
	sh("ip", "netns", "del", n.name)
}
