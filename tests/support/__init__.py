"""What the tests share: real Redis servers, a fault proxy, config and Lua helpers, test apps."""
