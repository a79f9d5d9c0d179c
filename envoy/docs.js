// Starts Swagger UI on /docs (a file of its own: the page's CSP allows no inline script).
// validatorUrl null: the default sends the document to validator.swagger.io for a badge.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
});
