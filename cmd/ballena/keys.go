package main

import (
	"crypto/ed25519"
	"fmt"

	"github.com/urfave/cli/v2"

	"ballena.dev/signing"
)

func keyCommand() *cli.Command {
	return &cli.Command{
		Name:  "key",
		Usage: "make and inspect publisher signing keys",
		Subcommands: []*cli.Command{{
			Name:      "generate",
			Usage:     "write NAME.key (PKCS#8 PEM, 0600) and NAME.pub (PKIX PEM) and print the key ID",
			ArgsUsage: "NAME",
			UsageText: "ballena key generate release\n   ballena key generate --dir /etc/ballena/keys ci-2026",
			Flags:     []cli.Flag{&cli.StringFlag{Name: "dir", Value: ".", Usage: "where to write the key pair"}, jsonFlag},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageErrorf("key generate: want one NAME, e.g. `ballena key generate release`")
				}
				keyPath, pubPath, id, err := signing.WriteKeyPair(c.String("dir"), c.Args().First())
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, map[string]string{"key": keyPath, "pub": pubPath, "keyId": id})
				}
				fmt.Fprintf(c.App.Writer, "wrote %s (private, 0600) and %s\nkey ID %s\n", keyPath, pubPath, id)
				return nil
			},
		}, {
			Name:      "id",
			Usage:     "print the key ID of a public or private key file",
			ArgsUsage: "FILE",
			UsageText: "ballena key id release.pub",
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageErrorf("key id: want one key FILE")
				}
				pub, err := loadAnyPublicKey(c.Args().First())
				if err != nil {
					return withCode(exitUsage, err)
				}
				fmt.Fprintln(c.App.Writer, signing.KeyID(pub))
				return nil
			},
		}},
	}
}

func loadAnyPublicKey(path string) (ed25519.PublicKey, error) {
	if pub, err := signing.LoadPublicKey(path); err == nil {
		return pub, nil
	}
	priv, err := signing.LoadPrivateKey(path)
	if err != nil {
		return nil, fmt.Errorf("%s holds neither an ed25519 public nor private key: %w", path, err)
	}
	return priv.Public().(ed25519.PublicKey), nil
}
