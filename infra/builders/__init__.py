"""Pure builders: plain functions of names and ARNs, no Pulumi, no AWS calls."""
