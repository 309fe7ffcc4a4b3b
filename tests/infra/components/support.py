"""Inputs shared by the component tests."""

TAGS = {"project": "stratus", "stack": "dev"}
KEY = "arn:aws:kms:us-east-1:123456789012:key/stack"
