import { defineConfig } from 'vite';

// Served by graphql-gateway under /console/ (embedded at its build time);
// `npm run dev` proxies the API to a gateway on :8080.
export default defineConfig({
  base: '/console/',
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 400 },
  server: {
    proxy: { '/graphql': { target: 'http://127.0.0.1:8080', ws: true } },
  },
});
