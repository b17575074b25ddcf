package wiring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/google/uuid"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
)

// BootstrapTarget is IDENTITYD_BOOTSTRAP_ADMIN parsed: a user id, or a normalized e-mail.
type BootstrapTarget struct {
	ID    uuid.UUID
	Email string
}

// ParseBootstrapAdmin reads a user id (canonical UUID) or an e-mail address.
func ParseBootstrapAdmin(v string) (BootstrapTarget, error) {
	if id, err := uuid.Parse(v); err == nil && len(v) == 36 {
		return BootstrapTarget{ID: id}, nil
	}
	if !strings.Contains(v, "@") {
		return BootstrapTarget{}, errors.New("must be a user id (UUID) or an e-mail address")
	}
	email, err := domain.NormalizeEmail(v)
	if err != nil {
		return BootstrapTarget{}, fmt.Errorf("not a valid e-mail address: %w", err)
	}
	return BootstrapTarget{Email: email}, nil
}

// adminGrantedFilter matches every admin_granted event of every user.
var adminGrantedFilter = events.SubjectRoot + ".user.*." + strings.TrimPrefix(string(events.TypeAdminGranted), "identityd.user.")

// bootstrapMeta is the metadata of the bootstrap's event: the system did it, not a request.
var bootstrapMeta = events.Metadata{Actor: "system", RequestID: "bootstrap-admin"}

// bootstrapAdmin makes the configured user the first administrator, by appending
// identityd.user.admin_granted (actor "system") — once in the life of the stream: only while
// the stream holds no admin_granted event at all. From then on administrators grant and
// revoke rights over the API, and the setting does nothing: an account registered later under
// a configured address (a deleted administrator's, say) is never made an administrator by it.
//
// An e-mail is resolved to the id of the account that holds the address now (its claim in the
// stream); the rights belong to that id. When no such account exists yet the bootstrap logs a
// warning and changes nothing; the next start tries again. Instances starting together may
// each decide to grant: the grant is an ordinary command on the user's aggregate, appended
// with an expectation, so at most one event results (granting an administrator emits
// nothing). It returns the sequence to wait for before serving (0: nothing to wait for).
func bootstrapAdmin(ctx context.Context, setting string, svc *domain.Service, store *eventstore.Store, logger *slog.Logger) (uint64, error) {
	if setting == "" {
		return 0, nil
	}
	target, err := ParseBootstrapAdmin(setting)
	if err != nil {
		return 0, fmt.Errorf("IDENTITYD_BOOTSTRAP_ADMIN: %w", err)
	}
	// The first genuine admin_granted of the whole stream, if any: batched direct gets. Events
	// refused by their signature do not count, so a forged grant cannot block the bootstrap.
	grants, err := store.Read(ctx, adminGrantedFilter, 1, 0)
	if err != nil {
		return 0, fmt.Errorf("bootstrap admin: look for earlier grants: %w", err)
	}
	for _, g := range grants {
		if g.Refusal == nil {
			logger.Info("bootstrap admin: administrators were granted before; IDENTITYD_BOOTSTRAP_ADMIN is ignored",
				"first_grant_seq", g.Sequence)
			return 0, nil
		}
	}
	id := target.ID
	if id == uuid.Nil {
		id, err = svc.UserIDByEmail(ctx, target.Email)
		if errors.Is(err, domain.ErrUserNotFound) {
			logger.Warn("bootstrap admin: no account holds this address yet; sign it up and restart identityd to make it the first administrator",
				"email", target.Email)
			return 0, nil
		}
		if err != nil {
			return 0, fmt.Errorf("bootstrap admin: resolve the e-mail: %w", err)
		}
	}
	res, err := svc.GrantAdmin(ctx, bootstrapMeta, id)
	if errors.Is(err, domain.ErrUserNotFound) {
		logger.Warn("bootstrap admin: no such user (or deleted); create it and restart identityd to make it the first administrator", "user_id", id)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("bootstrap admin: grant: %w", err)
	}
	logger.Info("bootstrap admin: granted administrator rights", "user_id", id, "seq", res.Seq)
	return res.Seq, nil
}

// waitBootstrap waits until the read model includes the bootstrap's grant, so the first
// administrator's first request is already let through.
func waitBootstrap(ctx context.Context, p *projections.Projector, seq uint64) error {
	if seq == 0 {
		return nil
	}
	if err := p.WaitFor(ctx, seq); err != nil {
		return fmt.Errorf("bootstrap admin: read model did not include the grant: %w", err)
	}
	return nil
}
