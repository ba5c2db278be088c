"""Training: `supernet` (`nas train-supernet`, SPOS) and `retrain` (`nas retrain`, one arch stand-alone) share
`loop`, `config`, `checkpoint` and `distributed`; `arch_samplers` draw the archs of a step, `subnet_optimizer`
steps only the weights a step used, `accuracy` measures top-1."""
