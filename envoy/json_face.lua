-- The JSON face's last touches, for requests the transcoder handled (JSON routes only; gRPC and
-- grpc-web pass through untouched):
--  * an HTTP status the gRPC code cannot express, hinted by the service in x-http-status
--    (201 for CreateUser, 503 for an unhealthy HealthService.Check);
--  * error bodies in the seed's shape {"detail": "..."} instead of google.rpc.Status JSON;
--  * no gRPC headers leaking;
--  * security headers, and HSTS when the request came over TLS.

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

function envoy_on_request(handle)
  local headers = handle:headers()
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set("instachatico.json", "https", headers:get("x-forwarded-proto") == "https")
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local meta = handle:streamInfo():dynamicMetadata():get("instachatico.json") or {}
  local status = tonumber(headers:get(":status")) or 0

  local hint = headers:get("x-http-status")
  if hint ~= nil then
    headers:remove("x-http-status")
    if status == 200 and hint:match("^[2-5]%d%d$") then
      headers:replace(":status", hint)
      status = tonumber(hint)
    end
  end

  for _, name in ipairs({ "grpc-status", "grpc-message", "grpc-status-details-bin" }) do
    headers:remove(name)
  end
  -- Headers first: they cannot change once the body is buffered.
  headers:replace("x-content-type-options", "nosniff")
  headers:replace("content-security-policy", "default-src 'none'; frame-ancestors 'none'")
  headers:replace("referrer-policy", "no-referrer")
  headers:replace("cache-control", "no-store")
  if meta["https"] then
    headers:replace("strict-transport-security", "max-age=63072000; includeSubDomains")
  end

  local content_type = headers:get("content-type") or ""
  if status >= 400 and content_type:find("application/json", 1, true) then
    reshape_error(handle, headers)
  end
end
