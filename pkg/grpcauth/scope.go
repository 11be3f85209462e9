// Package grpcauth authenticates and authorises every call on the
// cluster's gRPC ports (push.v1.Push on edges and routers, push.v1.Cluster
// between edges): who is calling (a client certificate, or a bearer JWT),
// what it may call (scopes), whether it is a cluster member (trusted with
// push.v1.Cluster and forwarded=true), and how fast it may publish (a token
// bucket per identity). It also holds the TLS side: server certificates
// re-read on change, and the dial options of members and backends.
//
// docs/security.md is the threat model this implements.
package grpcauth

import (
	"fmt"
	"strings"
)

// Scope is a set of calls a credential allows.
type Scope uint8

// The scopes, as named in a token's scope claim or a certificate's OU.
const (
	ScopePublish      Scope = 1 << iota // Publish, PublishStream, PublishBatch, PublishBatchStream
	ScopePublishMulti                   // PublishMulti
	ScopeBroadcast                      // Broadcast
	ScopeKick                           // Kick
	ScopePresence                       // Presence
	ScopeCluster                        // push.v1.Cluster, forwarded=true; granted to members only

	// ScopeBackend is every call a backend may be granted.
	ScopeBackend = ScopePublish | ScopePublishMulti | ScopeBroadcast | ScopeKick | ScopePresence
	scopeAll     = ScopeBackend | ScopeCluster
)

var scopeNames = [...]string{"publish", "publish_multi", "broadcast", "kick", "presence", "cluster"}

// ParseScope reads a space- or comma-separated list of scope names
// ("publish kick"). Unknown names are an error: a typo must not pass for
// a narrower grant than intended.
func ParseScope(s string) (Scope, error) {
	var out Scope
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' }) {
		found := false
		for i, n := range scopeNames {
			if f == n {
				out |= 1 << i
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown scope %q (want %s)", f, strings.Join(scopeNames[:], ", "))
		}
	}
	return out, nil
}

// String lists the scope's names, space-separated.
func (s Scope) String() string {
	var names []string
	for i, n := range scopeNames {
		if s&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, " ")
}

// Methods of push.v1 and the scope each needs.
var methodScopes = map[string]Scope{
	"/push.v1.Push/Publish":            ScopePublish,
	"/push.v1.Push/PublishStream":      ScopePublish,
	"/push.v1.Push/PublishBatch":       ScopePublish,
	"/push.v1.Push/PublishBatchStream": ScopePublish,
	"/push.v1.Push/PublishMulti":       ScopePublishMulti,
	"/push.v1.Push/Broadcast":          ScopeBroadcast,
	"/push.v1.Push/Kick":               ScopeKick,
	"/push.v1.Push/Presence":           ScopePresence,
	"/push.v1.Cluster/Take":            ScopeCluster,
	"/push.v1.Cluster/Claim":           ScopeCluster,
	"/push.v1.Cluster/LeaseStatus":     ScopeCluster,
}

// openPrefix is served to anyone: probes (kubelet, routers' --check,
// pushctl ring add) carry no credentials.
const openPrefix = "/grpc.health.v1.Health/"
