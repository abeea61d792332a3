"""consul-tproxy-vms: a Consul service mesh on EC2 VMs in transparent-proxy mode."""

from components.program import main

main()
