// Package faults is the fault suite: it runs a real cluster — edge, router
// and pushctl processes built from this repository, and for the etcd store
// an etcd server in a process of its own (test/faults/etcdserver) — on
// loopback, connects WebSocket users through the router, publishes to them
// from two publishers, injects one fault per scenario and checks, from the
// clients' side, what the architecture guarantees. `make faults` (cmd
// pushfault) runs every scenario at full size; `go test ./test/faults` runs
// a short set and asserts the counts.
//
// # Run
//
// Per scenario, in a directory of its own (process logs are kept there):
// the ring store (a file, or the etcd process), a ring of edges 1-3 written
// with pushctl, the edges (--lease-ttl Params.LeaseTTL, --ping-interval
// Params.Ping, --idle-timeout 4 pings), one router (two in g), then
// Params.Users users, each holding one WebSocket through a router
// (user i starts on router i mod routers). When every user is connected,
// two publishers start at Params.Rate together: publisher 1 through the
// routers' gRPC forwarder (push.v1.Push/Publish, round robin over the
// routers), publisher 2 through the Go SDK (pkg/client) on the ring store.
// Each publish goes to a random user with payload {"p":<publisher>,"n":<counter>}
// and its own 1 s deadline; its send time, answer time and outcome are
// recorded. After Params.Warmup the fault is injected; publishing goes on
// for at least Params.Duration in all and Params.Post after the fault; then
// the harness waits until every user is connected and nothing was
// delivered for Params.Quiet (bounded), and checks.
//
// # Clients
//
// A user reads text frames {"seq","epoch","data"}; heartbeats, broadcasts
// and gap notices are recognised. It keeps the last seq of the current
// epoch (an epoch it has not seen resets it) and on any end of its
// connection — close 4003, 1001, a drop, or no frame for 3 pings (so a
// paused edge is noticed) — it reconnects through a router after 0-300 ms
// with last_seq and epoch (epoch omitted while none was seen; last_seq
// sent on every reconnect, 0 when nothing was seen, so that a message
// written into a connection that died before the client read it is asked
// for again; only the first connection has no last_seq). A dial that
// fails moves the user to the next router.
//
// # Checks
//
// Only acknowledged publishes (no error and outcome DELIVERED, STORED or
// FORWARDED) count for the guarantee. Per user:
//
//   - lost: acknowledged, never received. In b, c and d a loss counts as
//     "lost with gap notice" instead (allowed) when the user received a gap
//     notice after the publish was sent.
//   - duplicated: each extra copy of a payload (p,n).
//   - out of order: an acknowledged publish A received after an
//     acknowledged publish B that was sent after A was acknowledged.
//   - misdelivered: a payload published to another user.
//   - moves: closes with 4003.
//
// # Affected and healthy users
//
// The edge id is not in the envelope, so who served a user is derived from
// the desired ring document (pkg/ring on what pushctl wrote) at the
// moments involved. A user is affected — may move, at most twice per
// owner change — when:
//
//   - planned changes (a): its owner on the desired ring differs before and
//     after a pushctl step (add, weight, drain; remove of a drained member
//     changes no owner); each such step counts one change;
//   - single-edge faults (b, c, d, e, h): its owner on the desired ring is
//     the faulty edge 2;
//   - ring add before start (i): its owner changes with the add;
//   - store outage (f) and router crash (g): nobody (no user may move; f
//     also allows no move at all).
//
// A 4003 for a user that is not affected counts as "unaffected moved".
// Healthy users are the users that are not affected in b, c, d, e, h and i,
// and all users otherwise; publish latency p50/p99/max is over the
// acknowledged publishes to healthy users. "Failures during the fault"
// counts failed publishes sent between the injection and the end of the
// fault window: the moment every user is connected again with no 4003 for
// a second after the fault's last action (kill, restart, SIGCONT, heal;
// bounded by Params.Recover), and not before 2 lease TTLs after that
// action. Failures outside the window are in the JSON
// (publish_failures, publish_failure_kinds).
//
// # Targets
//
// 0 lost, 0 duplicated, 0 out of order, 0 misdelivered, at most 2 moves
// per owner change of an affected user, 0 unaffected users moved, no move
// at all in f, every user connected at the end, and a publish p99 to
// healthy users of at most 50 ms (the test prints but never asserts
// latency).
//
// # Scenario h
//
// Needs root: it makes a network namespace with a veth pair to the root
// namespace on a private link-local /30 (169.254.X.0/30), runs edge 2
// inside it and every other service on the root side's address, and drops
// only edge 2 <-> etcd traffic with nftables rules inside the namespace
// (netns-deps.sh installs nftables when missing). Without the privileges
// the row says "skipped" with the reason.
package faults
