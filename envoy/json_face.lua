-- The JSON face's last touches that need logic (the fixed headers are header_mutation's):
--  * an HTTP status the gRPC code cannot express, hinted by the service in x-http-status
--    (201 for CreateUser and Register, 503 for an unhealthy HealthService.Check);
--  * error bodies in the seed's shape {"detail": "..."} instead of google.rpc.Status JSON;
--  * HSTS when the client came over TLS.
-- It runs for every JSON reply, so the success path is kept to a few header reads.

local function reshape_error(handle, headers)
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
  local out = '{"detail":"' .. message .. '"}'
  body:setBytes(out)
  headers:replace("content-length", tostring(#out))
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local status = tonumber(headers:get(":status")) or 0

  local hint = headers:get("x-http-status")
  if hint ~= nil then
    headers:remove("x-http-status")
    if status == 200 and hint:match("^[2-5]%d%d$") then
      headers:replace(":status", hint)
      status = tonumber(hint)
    end
  end

  if handle:streamInfo():downstreamSslConnection() ~= nil then
    headers:replace("strict-transport-security", "max-age=63072000; includeSubDomains")
  end

  -- Headers first: they cannot change once the body is buffered.
  if status >= 400 then
    local content_type = headers:get("content-type") or ""
    if content_type:find("application/json", 1, true) then
      reshape_error(handle, headers)
    end
  end
end
