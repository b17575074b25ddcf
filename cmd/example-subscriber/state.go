package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"

	"github.com/identityd/identityd/events"
)

// account is one subscribed address on the mailing list.
type account struct {
	UserID string `json:"user_id"`
	Email  string `json:"email"`
	Name   string `json:"name"`
}

// state is everything the provisioner keeps, saved as one JSON document. LastSeq and Accounts
// live in the same file on purpose: one atomic write moves both forward together, so the data
// can never say "applied" while the position says "not yet", or the other way round.
type state struct {
	// LastSeq is the stream sequence of the last event applied to Accounts (0: none yet).
	LastSeq uint64 `json:"last_seq"`
	// Applied counts the events applied: a non-idempotent number, so applying an event twice
	// would show.
	Applied uint64 `json:"applied"`
	// Accounts are the subscribed accounts, by user id.
	Accounts map[string]account `json:"accounts"`
}

// provisioner folds user events into the mailing list and persists it.
type provisioner struct {
	path string
	st   state
	log  *slog.Logger
}

// openProvisioner loads the state file at path; a missing file is an empty list at sequence 0.
func openProvisioner(path string, log *slog.Logger) (*provisioner, error) {
	p := &provisioner{path: path, st: state{Accounts: map[string]account{}}, log: log}
	data, err := os.ReadFile(path) // #nosec G304 -- the operator chooses the state file
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(data, &p.st); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt: %w", path, err)
	}
	if p.st.Accounts == nil {
		p.st.Accounts = map[string]account{}
	}
	return p, nil
}

// apply folds one event into the in-memory state and moves LastSeq to its sequence. It does
// not save; the caller saves before acking. Events must come in stream order, each once:
// an event at or below LastSeq is refused, so a caller that forgot to skip redeliveries
// finds out instead of double-applying.
func (p *provisioner) apply(env events.Envelope) error {
	if env.Sequence <= p.st.LastSeq {
		return fmt.Errorf("event at seq %d is at or below the last applied seq %d", env.Sequence, p.st.LastSeq)
	}
	switch e := env.Data.(type) {
	case events.UserRegistered:
		id := e.UserID.String()
		p.st.Accounts[id] = account{UserID: id, Email: e.Email, Name: e.Name}
		p.log.Info("subscribed", "seq", env.Sequence, "user_id", id, "email", e.Email, "name", e.Name)
	case events.UserRenamed:
		id := e.UserID.String()
		a, ok := p.st.Accounts[id]
		if !ok {
			// Cannot happen when consuming from the start of the stream, which is why the
			// consumer uses DeliverAllPolicy; logged rather than fatal.
			p.log.Warn("rename of an unknown account ignored", "seq", env.Sequence, "user_id", id)
			break
		}
		p.log.Info("renamed", "seq", env.Sequence, "user_id", id, "from", a.Name, "to", e.Name)
		a.Name = e.Name
		p.st.Accounts[id] = a
	case events.UserDeleted:
		id := e.UserID.String()
		delete(p.st.Accounts, id)
		p.log.Info("unsubscribed", "seq", env.Sequence, "user_id", id)
	default:
		// The consumer's filter only lets the three types above through. Anything else
		// still advances LastSeq, so it is acked and never seen again.
		p.log.Debug("event ignored", "seq", env.Sequence, "type", env.Type)
	}
	p.st.LastSeq = env.Sequence
	p.st.Applied++
	return nil
}

// save writes the state atomically and durably: a temporary file in the same directory is
// written and fsynced, then renamed over the state file, then the directory is fsynced so the
// rename itself survives a power loss. A crash at any point leaves either the old file or the
// new one, never a torn mix.
func (p *provisioner) save() error {
	data, err := json.MarshalIndent(p.st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(p.path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(p.path)+".*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("save state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("save state: fsync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := os.Rename(tmp.Name(), p.path); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if runtime.GOOS == "windows" {
		return nil // directories cannot be fsynced there
	}
	d, err := os.Open(dir) // #nosec G304 -- the state file's own directory
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save state: fsync dir: %w", err)
	}
	return nil
}
