package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/google/uuid"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
)

// usersShow prints a user's state now or at a past instant, rebuilt from the stream alone.
func (c *cli) usersShow(ctx context.Context, args []string) error {
	var asOfS string
	pos, err := subFlags("users show", args, func(fs *flag.FlagSet) { fs.StringVar(&asOfS, "as-of", "", "") })
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"users show takes one user id"}
	}
	id, err := uuid.Parse(pos[0])
	if err != nil {
		return usageError{"users show: not a user UUID: " + pos[0]}
	}
	asOf, err := parseTime("as-of", asOfS)
	if err != nil {
		return err
	}
	st, err := c.events(ctx)
	if err != nil {
		return err
	}
	history, err := st.Load(ctx, events.UserAggregate(id), 0)
	if err != nil {
		return err
	}
	for _, e := range history {
		if e.Refusal != nil {
			c.refused(e)
		}
	}
	snap := domain.ReplayUser(id, history, asOf)
	if err := c.out.Encode(snap); err != nil {
		return err
	}
	if !snap.Exists {
		fmt.Fprintln(c.stderr, "identityctl: no such user at that time")
		return errFindings
	}
	return nil
}
