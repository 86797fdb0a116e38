"""The packaged experiment configs (as `qpo_jax.configs` once installed): one file each."""
