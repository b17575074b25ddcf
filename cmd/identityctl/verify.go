package main

import (
	"context"

	"github.com/identityd/identityd/cmd/internal/wiring"
)

// verify folds the whole stream and compares it with every read model and with the hash
// chains (wiring.Verify, the check the tests run after every scenario); it prints each difference, then a summary, and exits 1 if there
// is any difference.
func (c *cli) verify(ctx context.Context, args []string) error {
	if len(args) > 0 {
		return usageError{"verify takes no arguments"}
	}
	c.signaturesOnly = true
	db, st, err := c.both(ctx, false)
	if err != nil {
		return err
	}
	prog := c.newProgress("verify")
	rep, err := wiring.Verify(ctx, db, st, prog.update)
	prog.done()
	if err != nil {
		return err
	}
	for _, d := range rep.Differences {
		if err := c.out.Encode(d); err != nil {
			return err
		}
	}
	if err := c.out.Encode(map[string]any{
		"verified": len(rep.Differences) == 0, "position": rep.Position, "stream_last": rep.StreamLast,
		"events": rep.Events, "users": rep.Users, "differences": len(rep.Differences),
	}); err != nil {
		return err
	}
	if len(rep.Differences) > 0 {
		return errFindings
	}
	return nil
}
