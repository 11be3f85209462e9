package daemon

import (
	"flag"

	"github.com/pushcluster/push/pkg/admin"
	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/store"
)

// Security is the configuration of a daemon's other planes
// (docs/security.md): who may call its gRPC port, how it reaches etcd, and
// who may change things through its admin port. The edge and the router
// take the same flags for it.
type Security struct {
	GRPC  grpcauth.Config
	Etcd  store.EtcdSecurity
	Admin admin.Auth
}

// BindFlags registers the flags of all three on fs.
func (s *Security) BindFlags(fs *flag.FlagSet) {
	s.GRPC.RegisterFlags(fs)
	s.Etcd.RegisterFlags(fs)
	s.Admin.RegisterFlags(fs)
}
