package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/identityd/identityd/events/embedded"
)

// credentialsLine is what `nats credentials` prints: where a user's key is and its public key.
type credentialsLine struct {
	User      string `json:"user"`
	File      string `json:"file"`
	PublicKey string `json:"public_key"`
}

// natsCredentials prints the reader's credentials file: the one given with --nats-creds, else
// the reader key in the data dir. With --seed it copies the file's contents to stdout instead.
func (c *cli) natsCredentials(args []string) error {
	var seed bool
	pos, err := subFlags("nats credentials", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&seed, "seed", false, "")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"nats credentials takes no arguments"}
	}
	file := c.natsCreds
	if file == "" {
		return fmt.Errorf("no reader key at %s: start identityd on embedded NATS with this IDENTITYD_DATA_DIR first, "+
			"or pass --nats-creds", filepath.Join(embedded.KeyDir(c.dataDir), embedded.ReaderSeedFile))
	}
	pub, err := embedded.PublicKey(file)
	if err != nil {
		return err
	}
	if seed {
		b, err := os.ReadFile(file) //nolint:gosec // the credentials file the operator named
		if err != nil {
			return err
		}
		_, err = c.stdout.Write(b)
		clear(b)
		return err
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	return c.out.Encode(credentialsLine{User: embedded.ReaderUser, File: abs, PublicKey: pub})
}

// natsKeys creates (or keeps) identityd's and the reader's seeds in --dir and writes the
// nats-server include file with their public keys and permissions beside them.
func (c *cli) natsKeys(args []string) error {
	var dir string
	pos, err := subFlags("nats keys", args, func(fs *flag.FlagSet) {
		fs.StringVar(&dir, "dir", "", "")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 || dir == "" {
		return usageError{"nats keys needs --dir DIR and no arguments"}
	}
	k, err := embedded.LoadOrCreateKeys(dir)
	if err != nil {
		return err
	}
	conf, err := embedded.WriteServerConfig(k)
	if err != nil {
		return err
	}
	for _, l := range []credentialsLine{
		{User: embedded.IdentitydUser, File: k.IdentitydSeed(), PublicKey: k.Identityd},
		{User: embedded.ReaderUser, File: k.ReaderSeed(), PublicKey: k.Reader},
	} {
		if err := c.out.Encode(l); err != nil {
			return err
		}
	}
	return c.out.Encode(map[string]string{"server_config": conf})
}
