"""The data of every command (docs/design.md section 7): `source` parses `--data` and checks its files,
`datasets` builds the train and val sets of a source, `splits` takes the fixed held-out and train-subset parts,
`loaders` makes the seeded, sharded, resumable loaders."""
