package projections

import (
	"github.com/identityd/identityd/projections/audit"
	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/users"
)

// All is every read model identityd keeps, in the order a batch writes them. A new read
// model is a package implementing engine.Projection and one line here.
func All() []engine.Projection {
	return []engine.Projection{
		users.Projection{},
		audit.Projection{},
	}
}
