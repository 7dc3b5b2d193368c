"""Resources over the store: transactions, IPAM, records shared between resources."""
