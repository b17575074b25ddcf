package httpapi

import (
	"net/http"
	"sort"

	"github.com/gin-gonic/gin"

	"github.com/identityd/identityd/events"
)

// EventKeys are the event-signing public keys the API publishes, so that subscribers and
// auditors can verify the stream.
type EventKeys struct {
	// Signing is the key new events are signed with.
	Signing events.PublicKey
	// Trusted are all the keys whose events are accepted (Signing among them).
	Trusted *events.Keyring
}

type eventKeyJSON struct {
	KeyID     string `json:"key_id"`
	Algorithm string `json:"algorithm"`
	PublicKey string `json:"public_key"`
}

// eventKeys answers GET /api/v0/event-keys: public keys, so no authentication.
func (a *API) eventKeys(c *gin.Context) {
	k := a.cfg.EventKeys
	keys := make([]eventKeyJSON, 0, 4)
	for _, p := range k.Trusted.Keys() {
		keys = append(keys, eventKeyJSON{KeyID: p.KeyID(), Algorithm: "Ed25519", PublicKey: p.String()})
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].KeyID < keys[j].KeyID })
	c.Header("Cache-Control", "public, max-age=300")
	c.JSON(http.StatusOK, gin.H{
		"signing_key_id":   k.Signing.KeyID(),
		"keys":             keys,
		"unsigned_through": k.Trusted.UnsignedThrough(),
	})
}
