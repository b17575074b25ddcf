package events

import "testing"

// Every event type in the registry declares its effect on credentials: the HTTP API's wait and
// the credential cache's invalidation are derived from it, so a new event type must say what
// it does to credentials before it can be emitted.
func TestEveryEventTypeDeclaresAnEffect(t *testing.T) {
	types := Types()
	if len(types) == 0 {
		t.Fatal("no event types registered")
	}
	for _, typ := range types {
		if CurrentVersion(typ) == 0 {
			t.Errorf("%s is registered but has no current schema version", typ)
		}
		if !declaresEffect(typ) {
			t.Errorf("%s declares no effect on credentials: add it to the table in effect.go", typ)
		}
	}
	for typ := range effects {
		if _, ok := registry[typ]; !ok {
			t.Errorf("the effect table names %s, which is not a registered event type", typ)
		}
	}
	if got := EffectOf("identityd.user.unknown"); got != EffectNarrowsRights {
		t.Errorf("EffectOf(unknown type) = %v, want %v", got, EffectNarrowsRights)
	}
}
