"""The stack's certificate authority and the serving certificate, made with the Pulumi TLS provider.

The CA's key never leaves Pulumi's (encrypted) state; its certificate is a stack output that
clients trust. The server's key goes to SSM Parameter Store as a SecureString under the stack
key, its certificate (public) as a String; only the serving role can read either.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from infra.components.base import child, component_tags

KEY_ALGORITHM = "ECDSA"
KEY_CURVE = "P256"
"""ECDSA P-256 for both keys: small certificates and cheap handshakes, supported by OpenSSL,
gRPC (BoringSSL) and every stock client."""
CA_VALIDITY_HOURS = 5 * 365 * 24
CA_EARLY_RENEWAL_HOURS = 90 * 24
SERVER_VALIDITY_HOURS = 90 * 24
SERVER_EARLY_RENEWAL_HOURS = 30 * 24
"""A `pulumi up` in the last 30 days of the server certificate's 90 re-issues it (docs/operations.md)."""
SERVER_USES = ["digital_signature", "key_encipherment", "server_auth"]
CA_USES = ["cert_signing", "crl_signing", "digital_signature"]


def private_dns_wildcard(region: str) -> str:
    """The wildcard covering EC2's private DNS names of instances in `region` (`ip-10-42-0-5.ec2.internal`
    in us-east-1, `ip-10-42-0-5.<region>.compute.internal` elsewhere)."""
    return "*.ec2.internal" if region == "us-east-1" else f"*.{region}.compute.internal"


def server_dns_names(load_balancer_dns: str, region: str) -> list[str]:
    """Subject alternative names of the serving certificate.

    Args:
        load_balancer_dns: the internal NLB's DNS name (what `serving_url` names).
        region: the stack's region.

    Returns:
        The load balancer's name, its per-zone names (`<zone>.<name>`), and the hosts' private
        names (a wildcard: the Auto Scaling group replaces hosts, their names are not known ahead).
    """
    return [load_balancer_dns, f"*.{load_balancer_dns}", private_dns_wildcard(region)]


@dataclass(frozen=True, kw_only=True)
class StackTlsArgs:
    """Inputs of `StackTls`."""

    load_balancer_dns: pulumi.Input[str]
    """DNS name of the internal load balancer the certificate must cover."""
    region: str
    """The stack's region (the hosts' private DNS suffix)."""
    key_arn: pulumi.Input[str]
    """The stack key, for the server key's SecureString."""
    cert_parameter_name: str
    """SSM parameter name of the server certificate (String, PEM)."""
    key_parameter_name: str
    """SSM parameter name of the server key (SecureString, PEM, PKCS#8); the IAM policy was scoped to it."""
    organization: str
    """Subject organization of both certificates (`<organization>/<project>/<stack>`)."""
    tags: dict[str, str]
    """Base tags; the component adds `component: tls`."""


class StackTls(pulumi.ComponentResource):
    """A self-signed CA, a server key and certificate signed by it, the two SSM parameters."""

    ca_certificate_pem: pulumi.Output[str]
    """The CA certificate (PEM): clients verify the servers with it (`curl --cacert`)."""
    cert_parameter_name: pulumi.Output[str]
    key_parameter_name: pulumi.Output[str]
    parameters: list[aws.ssm.Parameter]
    """Both parameters: the hosts must not boot before they exist."""

    def __init__(self, name: str, args: StackTlsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:StackTls", name, None, opts)
        tags = component_tags(args.tags, "tls")
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child(self))
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            # The CA signs server certificates only, never another CA.
            max_path_length=0,
            allowed_uses=CA_USES,
            subject={"common_name": "stratus stack CA", "organization": args.organization},
            validity_period_hours=CA_VALIDITY_HOURS,
            early_renewal_hours=CA_EARLY_RENEWAL_HOURS,
            set_subject_key_id=True,
            opts=child(self),
        )
        server_key = tls.PrivateKey(
            f"{name}-server-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child(self)
        )
        request = tls.CertRequest(
            f"{name}-server-csr",
            private_key_pem=server_key.private_key_pem,
            dns_names=pulumi.Output.from_input(args.load_balancer_dns).apply(
                lambda dns: server_dns_names(dns, args.region)
            ),
            # Clients match the subject alternative names; the common name is a label (X.509 caps it
            # at 64 characters, shorter than a load balancer's DNS name can be).
            subject={"common_name": "stratus serving", "organization": args.organization},
            opts=child(self),
        )
        server = tls.LocallySignedCert(
            f"{name}-server-cert",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=ca_key.private_key_pem,
            ca_cert_pem=ca.cert_pem,
            allowed_uses=SERVER_USES,
            validity_period_hours=SERVER_VALIDITY_HOURS,
            early_renewal_hours=SERVER_EARLY_RENEWAL_HOURS,
            opts=child(self),
        )
        key_parameter = aws.ssm.Parameter(
            f"{name}-key-parameter",
            name=args.key_parameter_name,
            description="stratus serving TLS private key (PEM, PKCS#8)",
            type="SecureString",
            key_id=args.key_arn,
            value=server_key.private_key_pem_pkcs8,
            tags=tags,
            opts=child(self),
        )
        cert_parameter = aws.ssm.Parameter(
            f"{name}-cert-parameter",
            name=args.cert_parameter_name,
            description="stratus serving TLS certificate (PEM, public)",
            # A certificate is public: a String, so clients and tools can read it without the key.
            type="String",
            value=server.cert_pem,
            tags=tags,
            opts=child(self),
        )
        self.parameters = [key_parameter, cert_parameter]
        self.ca_certificate_pem = ca.cert_pem
        self.cert_parameter_name = cert_parameter.name
        self.key_parameter_name = key_parameter.name
        self.register_outputs(
            {
                "ca_certificate_pem": self.ca_certificate_pem,
                "cert_parameter_name": self.cert_parameter_name,
                "key_parameter_name": self.key_parameter_name,
            }
        )
