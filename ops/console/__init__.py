"""The operator console in the browser (`stockout-sync console`): `app.create_app` builds it, `pages`
holds the routes, `web` the guard they stand behind, `auth` and `audit` who may do what and what was
done. Pages, security and why: docs/console.md."""
