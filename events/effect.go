package events

// Effect is what an event does to the credentials (session and API tokens) that authenticate
// requests, and to what an instance may hold in memory with them (the user's profile and
// rights). The domain states the effect of every command it runs from the events the command
// emits, the HTTP API derives from it how long a write waits before it answers, and the
// credential cache derives from it which cached entries an arriving event invalidates. It lives
// here, beside the event types, so every event type declares one and no consumer keeps its own
// list.
//
// Effects are ordered: of several events, the largest (strongest) effect counts.
type Effect uint8

// The effects, weakest first.
const (
	// EffectNone: nothing a request's credential authenticates with or carries changes (an
	// address claimed or released, a user registered, a password set: passwords are checked
	// against the stream at log-in, never answered from a cached credential).
	EffectNone Effect = iota
	// EffectAddsCredential: a new credential exists; every credential that authenticated before
	// still does, with the same profile and rights.
	EffectAddsCredential
	// EffectProfileOnly: profile fields a credential carries change (the name), and nothing an
	// authorization decision reads.
	EffectProfileOnly
	// EffectWidensRights: the user may do more than before (administrator rights granted).
	EffectWidensRights
	// EffectNarrowsRights: a credential stops working or may do less (a token revoked, a
	// session ended, the account deleted, administrator rights revoked). Until every instance
	// has the event, the old rights could still be used.
	EffectNarrowsRights
)

// effects declares each event type's effect. Every type in the registry has an entry
// (TestEveryEventTypeDeclaresAnEffect); a type without one would count as narrowing rights.
var effects = map[Type]Effect{
	TypeUserRegistered: EffectNone,
	TypePasswordSet:    EffectNone,
	TypeEmailClaimed:   EffectNone,
	TypeEmailReleased:  EffectNone,
	TypeTokenCreated:   EffectAddsCredential,
	TypeSessionStarted: EffectAddsCredential,
	TypeUserRenamed:    EffectProfileOnly,
	TypeAdminGranted:   EffectWidensRights,
	TypeTokenRevoked:   EffectNarrowsRights,
	TypeSessionEnded:   EffectNarrowsRights,
	TypeUserDeleted:    EffectNarrowsRights,
	TypeAdminRevoked:   EffectNarrowsRights,
}

// EffectOf is an event type's effect on credentials. An unknown type is taken as narrowing
// rights, the effect that waits longest and trusts no cached state.
func EffectOf(t Type) Effect {
	if e, ok := effects[t]; ok {
		return e
	}
	return EffectNarrowsRights
}

// declaresEffect reports whether the type has an entry in the effect table.
func declaresEffect(t Type) bool {
	_, ok := effects[t]
	return ok
}

// String names the effect.
func (e Effect) String() string {
	switch e {
	case EffectNone:
		return "none"
	case EffectAddsCredential:
		return "adds_credential"
	case EffectProfileOnly:
		return "profile_only"
	case EffectWidensRights:
		return "widens_rights"
	case EffectNarrowsRights:
		return "narrows_rights"
	}
	return "unknown"
}
