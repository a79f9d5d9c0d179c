-- The JSON face's logic (the fixed response headers are header_mutation's).
--
-- Requests (/api/v1/... and /health), before the transcoder sees them:
--  * a body is accepted only as application/json (parameters allowed; a charset other than
--    utf-8 is not): anything else, or a body with no content-type, is 415. This is what stops
--    a cross-site form post or a text/plain fetch, which browsers send without a preflight.
--    A request without a body needs no content-type.
--  * the body must be RFC 8259 JSON (the transcoder's protobuf parser accepts trailing commas,
--    single quotes and more), and a list in it may hold no null and no list (the transcoder
--    would drop the one and flatten the other): otherwise 400.
--  * a path variable is the only source of its field: the query may not name it (400). A body
--    that sets it to another value is refused by the transcoder (reject_binding_body_field_collisions).
-- Responses:
--  * an HTTP status the gRPC code cannot express, hinted by the service in x-http-status
--    (201 for CreateUser and Register, 503 for an unhealthy HealthService.Check), and 409
--    for FAILED_PRECONDITION;
--  * error bodies in the seed's shape {"detail": "..."} instead of google.rpc.Status JSON;
--  * HSTS when the client came over TLS.
-- Both run for every JSON call, so the common paths are kept to a few header reads.

local byte, find, sub = string.byte, string.find, string.sub

-- The fields bound by a path variable, by the path they appear in (see the proto's
-- google.api.http annotations; tests/integration/hostile.rs checks every annotated route).
-- Query names are matched as the transcoder reads them: proto name or JSON name.
local PATH_BOUND = {
  { "^/api/v1/users/me/sessions/[^/]+$", { session_id = true, sessionId = true } },
  { "^/api/v1/users/me/passkeys/[^/]+$", { id = true } },
  { "^/api/v1/users/[^/]+$", { id = true } },
  { "^/api/v1/users/[^/]+/[^/]+$", { id = true } },
  { "^/api/v1/service%-accounts/[^/]+$", { id = true } },
  { "^/api/v1/service%-accounts/[^/]+/keys$", { service_account_id = true, serviceAccountId = true } },
  { "^/api/v1/service%-accounts/[^/]+/keys/[^/]+$",
    { service_account_id = true, serviceAccountId = true, key_id = true, keyId = true } },
  { "^/api/v1/service%-accounts/[^/]+/keys/[^/]+/rotate$",
    { service_account_id = true, serviceAccountId = true, key_id = true, keyId = true } },
}

-- Deepest nesting accepted in a body; ours are two levels deep.
local MAX_DEPTH = 32

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The path-bound field a query string tries to set, or nil.
local function path_bound_in_query(path, query)
  for _, rule in ipairs(PATH_BOUND) do
    if find(path, rule[1]) then
      for pair in query:gmatch("[^&]+") do
        local name = pair:match("^([^=]*)")
        if rule[2][name] or rule[2][unescape(name)] then
          return unescape(name)
        end
      end
      return nil
    end
  end
  return nil
end

-- application/json, with any parameters except a charset other than utf-8.
local function is_json_type(value)
  local v = value:lower():gsub("%s", "")
  if v == "application/json" then
    return true
  end
  local params = v:match("^application/json;(.*)$")
  if params == nil then
    return false
  end
  for param in params:gmatch("[^;]+") do
    local charset = param:match("^charset=(.*)$")
    if charset ~= nil and charset ~= "utf-8" and charset ~= '"utf-8"' then
      return false
    end
  end
  return true
end

-- RFC 8259, strictly: no trailing commas, single quotes, comments, bare words, leading zeros,
-- control characters in strings or invalid UTF-8.
local function skip_ws(s, i)
  local _, e = find(s, "^[ \t\n\r]*", i)
  return e + 1
end

local ESCAPES = { [34] = true, [92] = true, [47] = true, [98] = true, [102] = true, [110] = true, [114] = true, [116] = true }

-- s[i] is a quote; returns the index after the closing quote, or nil.
local function scan_string(s, i)
  i = i + 1
  while true do
    local _, e = find(s, '^[^"\\%z\1-\31]*', i)
    i = e + 1
    local c = byte(s, i)
    if c == 34 then
      return i + 1
    elseif c == 92 then
      local n = byte(s, i + 1)
      if n == 117 then
        if not find(s, "^%x%x%x%x", i + 2) then
          return nil
        end
        i = i + 6
      elseif ESCAPES[n] then
        i = i + 2
      else
        return nil
      end
    else
      return nil -- a control character, or the end of the text
    end
  end
end

local function scan_number(s, i)
  local _, e = find(s, "^-?0", i)
  if e == nil then
    _, e = find(s, "^-?[1-9]%d*", i)
    if e == nil then
      return nil
    end
  end
  local _, f = find(s, "^%.%d+", e + 1)
  if f ~= nil then
    e = f
  end
  _, f = find(s, "^[eE][+-]?%d+", e + 1)
  if f ~= nil then
    e = f
  end
  return e + 1
end

local function scan_scalar(s, i)
  local c = byte(s, i)
  if c == 34 then
    return scan_string(s, i)
  elseif c == 116 then
    return sub(s, i, i + 3) == "true" and i + 4 or nil
  elseif c == 102 then
    return sub(s, i, i + 4) == "false" and i + 5 or nil
  elseif c == 110 then
    return sub(s, i, i + 3) == "null" and i + 4 or nil
  elseif c == 45 or (c ~= nil and c >= 48 and c <= 57) then
    return scan_number(s, i)
  end
  return nil
end

-- A member's key and colon at i (after whitespace); returns where its value starts, or nil.
local function scan_key(s, i)
  if byte(s, i) ~= 34 then
    return nil
  end
  i = scan_string(s, i)
  if i == nil then
    return nil
  end
  i = skip_ws(s, i)
  if byte(s, i) ~= 58 then
    return nil
  end
  return skip_ws(s, i + 1)
end

local function valid_utf8(s)
  local i = 1
  while true do
    local a = find(s, "[\128-\255]", i)
    if a == nil then
      return true
    end
    local c, c1 = byte(s, a), byte(s, a + 1) or 0
    local len
    if c >= 0xC2 and c <= 0xDF then
      len = 1
    elseif c >= 0xE0 and c <= 0xEF then
      len = 2
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 3
    else
      return false
    end
    if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F) or (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F) then
      return false -- overlong, surrogate, or beyond U+10FFFF
    end
    for k = 1, len do
      local ck = byte(s, a + k)
      if ck == nil or ck < 0x80 or ck > 0xBF then
        return false
      end
    end
    i = a + len + 1
  end
end

-- What the transcoder would read silently otherwise: a null item as no item, a nested list as
-- its items (no field of the API is a list of lists).
local NESTED = "A list in the body may hold neither null nor another list"

-- Whether s is RFC 8259 JSON whose lists hold no null and no list; false and why if not.
local function is_json(s)
  if not valid_utf8(s) then
    return false
  end
  local n = #s
  local closers, depth = {}, 0
  local i = skip_ws(s, 1)
  while true do
    -- A value starts at i.
    local c = byte(s, i)
    if depth > 0 and closers[depth] == 93 and (c == 91 or c == 110) then
      return false, NESTED
    end
    local ended = true
    if c == 123 or c == 91 then
      depth = depth + 1
      if depth > MAX_DEPTH then
        return false
      end
      local close = c == 123 and 125 or 93
      closers[depth] = close
      i = skip_ws(s, i + 1)
      if byte(s, i) == close then
        depth = depth - 1
        i = i + 1
      else
        if c == 123 then
          i = scan_key(s, i)
          if i == nil then
            return false
          end
        end
        ended = false
      end
    else
      i = scan_scalar(s, i)
      if i == nil then
        return false
      end
    end
    -- After a value: commas and closing brackets, until the next value or the end.
    while ended do
      i = skip_ws(s, i)
      if depth == 0 then
        return i > n
      end
      c = byte(s, i)
      if c == 44 then
        i = skip_ws(s, i + 1)
        if closers[depth] == 125 then
          i = scan_key(s, i)
          if i == nil then
            return false
          end
        end
        ended = false
      elseif c == closers[depth] then
        depth = depth - 1
        i = i + 1
      else
        return false
      end
    end
  end
end

-- Refuses the request with {"detail": detail} (local_reply_config shapes it; the metadata
-- keeps its 400s from being replaced by the generic message for the transcoder's errors).
local function reject(handle, status, detail)
  handle:streamInfo():dynamicMetadata():set("instachatico.json_face", "rejected", "true")
  handle:respond({ [":status"] = tostring(status) }, detail)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path") or ""
  if not (find(path, "^/api/v1/") or find(path, "^/health")) then
    return
  end
  local q = find(path, "?", 1, true)
  if q ~= nil then
    local bound = path_bound_in_query(sub(path, 1, q - 1), sub(path, q + 1))
    if bound ~= nil then
      return reject(handle, 400, "The path sets " .. bound .. "; it may not be given in the query")
    end
  end
  local content_type = headers:get("content-type")
  if content_type ~= nil and not is_json_type(content_type) then
    return reject(handle, 415, "Unsupported media type: send application/json")
  end
  -- Headers may not be touched once the body is read. Without a body this returns at once.
  local body = handle:body()
  if body == nil or body:length() == 0 then
    return
  end
  if content_type == nil then
    return reject(handle, 415, "Unsupported media type: send application/json")
  end
  local ok, why = is_json(body:getBytes(0, body:length()))
  if not ok then
    return reject(handle, 400, why or "Request body is not valid JSON")
  end
end

local function reshape_error(handle)
  local body = handle:body()
  if body == nil or body:length() == 0 then
    return
  end
  local text = body:getBytes(0, body:length())
  -- The transcoder prints google.rpc.Status; its message is already a JSON-escaped string.
  local message = text:match('^{"code":%d+,"message":"(.*)","details":%[.-%]}$')
    or text:match('^{"code":%d+,"message":"(.*)"}$')
  if message == nil then
    return
  end
  body:setBytes('{"detail":"' .. message .. '"}')
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local status = tonumber(headers:get(":status")) or 0

  -- A FAILED_PRECONDITION error (a well-formed request the state refuses: an admin deleting or
  -- demoting themself, the last admin, an 11th key) carries the hint 409: the transcoder's 400
  -- would call the request malformed (SPEC 3.3 allows either).
  local hint = headers:get("x-http-status")
  if hint ~= nil then
    headers:remove("x-http-status")
    if (status == 200 and hint:match("^[2-5]%d%d$")) or (status == 400 and hint == "409") then
      headers:replace(":status", hint)
      status = tonumber(hint)
    end
  end

  if handle:streamInfo():downstreamSslConnection() ~= nil then
    headers:replace("strict-transport-security", "max-age=63072000; includeSubDomains")
  end

  -- Headers are final before the body is read (they cannot change afterwards): the new body's
  -- length is unknown yet, so the old content-length goes and the reply is sent chunked.
  if status >= 400 then
    local content_type = headers:get("content-type") or ""
    if content_type:find("application/json", 1, true) then
      headers:remove("content-length")
      reshape_error(handle)
    end
  end
end
