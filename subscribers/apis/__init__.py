"""Subscribers and topics, on Novu's v1 and v2 paths (NOVU_API.md).

novu-py speaks v2 (cursor lists, PATCH, `{subscriptions}` or `{subscriberIds}`); novu
1.14 speaks v1 (page lists, PUT with nulls for unset fields, `{subscribers}`).

A module per resource, as subscribers/urls.py routes them: subscribers, topics, and
subscriptions (a topic's members, a subscriber's topics); common holds what they share.
Nothing is re-exported here: the URL conf names each view by its module."""
