"""用友BIP open API: discovery, the shared token, the requestor and the other-outbound-record models."""
