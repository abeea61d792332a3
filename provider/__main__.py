"""Entry point of the consul-tproxy-vms component package (PulumiPlugin.yaml, runtime python).

Pulumi's Python language host runs this file when a consumer's program uses the package; the SDK's
analyzer infers the schema from the components' annotations (consul_tproxy_vms/package.py).
"""

from importlib.metadata import PackageNotFoundError, version

from consul_tproxy_vms.package import COMPONENTS, PACKAGE
from pulumi.provider.experimental import component_provider_host


def package_version() -> str:
    """The installed package's version (pyproject.toml), which the schema and the SDKs carry."""
    try:
        return version("consul-tproxy-vms")
    except PackageNotFoundError:
        return "0.0.0"


if __name__ == "__main__":
    component_provider_host(COMPONENTS, PACKAGE, version=package_version())
