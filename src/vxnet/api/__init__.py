"""The northbound REST API: Neutron v2.0 and a Keystone v3 subset."""
