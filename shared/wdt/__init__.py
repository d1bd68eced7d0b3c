"""旺店通·企业奇门: signing, the requestor, the stockout models and the paginated query."""
